"""New, opt-in options for relation-capable students and specific-caption worlds: named presets, position-preserving
pooling, chain captions, contrast groups, and several near-misses per caption. Today's defaults are untouched."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from workbench.data import grammar
from workbench.data.nearmiss import build_near_misses
from workbench.data.perturbations import minimal_pairs, perturb
from workbench.data.sampling import layout_key
from workbench.data.scene import CaptionSpec, Mention, Obj, Scene, relevance
from workbench.data.world import (
    WORLD_PRESETS,
    WorldConfig,
    build_split,
    build_world,
    caption_fact_ids,
    fact_columns,
    world_preset,
)
from workbench.models.student import STUDENT_PRESETS, DualEncoder, StudentConfig, student_preset
from workbench.training.batches import near_miss_columns

CHAIN = world_preset("contrast-chain-v1", n_train=60, n_val=6, n_test=30)
# red square top-left, blue circle top-right, green cross bottom-right
SCENE = Scene((Obj(0, 0, 0, 0, 0), Obj(1, 2, 1, 0, 2), Obj(3, 1, 1, 2, 2)))


@pytest.fixture(scope="module")
def chain_world():
    return build_world(CHAIN)


# ------------------------------------------------------------------------------------------------------- presets


def test_presets_name_todays_world_and_student():
    assert WORLD_PRESETS["ambiguous-v1"] == WorldConfig()
    assert STUDENT_PRESETS["relation-blind-v1"] == StudentConfig()
    assert world_preset("ambiguous-v1", seed=3) == WorldConfig(seed=3)
    assert student_preset("cells-v1", embed_dim=144).embed_dim == 144
    with pytest.raises(ValueError, match="world preset"):
        world_preset("nope")


# ------------------------------------------------------------------------------------------------------ students


@pytest.mark.parametrize("name", sorted(STUDENT_PRESETS))
def test_student_presets_embed_to_unit_vectors(name, tiny_world):
    student = DualEncoder(student_preset(name)).eval()
    with torch.no_grad():
        img = student.encode_image(tiny_world.val.images[:4])
        txt = student.encode_text(tiny_world.val.tokens[:4])
    e = student.config.embed_dim
    assert img.shape == (4, e) and txt.shape == (4, e)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_cell_pooling_keeps_each_cell_in_its_own_slot(tiny_world):
    """Without image layers a cell only moves its own slot of the (pre-normalisation) embedding."""
    student = DualEncoder(StudentConfig(pool="cells", coords=True, embed_dim=90, image_layers=0)).eval()
    a = tiny_world.val.images[:1].clone()
    b = a.clone()
    b[:, :, 16:24, 16:24] = torch.rand(1, 3, 8, 8)  # cell 8 (bottom right)
    with torch.no_grad():
        ea, eb = student.encode_image(a), student.encode_image(b)
    ratio = (ea / eb).reshape(9, 10)  # normalisation scales every slot alike; only slot 8 changes direction
    assert torch.allclose(ratio[:8], ratio[0, 0].expand(8, 10), atol=1e-4)
    assert not torch.allclose(ratio[8], ratio[0, 0].expand(10), atol=1e-3)


def test_student_config_checks_slots_and_loads_old_dicts():
    with pytest.raises(ValueError, match="divisible by 9"):
        StudentConfig(pool="cells", embed_dim=64)
    old = StudentConfig().__dict__ | {"stem": {}}
    for new_field in ("coords", "text_pool", "text_head_hidden", "max_words"):
        old.pop(new_field)
    assert StudentConfig.from_dict(old) == StudentConfig()


# --------------------------------------------------------------------------------------------------- chain captions


def test_chain_grammar_round_trips_and_reads_both_ways():
    spec = CaptionSpec((Mention(0, 0, 0), Mention(1, 2, 1), Mention(3, 1, 1)), 0, (3,))  # sq left of ci, ci below cr?
    rng = np.random.default_rng(0)
    texts = [grammar.render(spec, rng) for _ in range(200)]
    assert {grammar.canonical(grammar.parse(t)) for t in texts} == {grammar.canonical(spec)}
    assert grammar.canonical(grammar.reverse_chain(spec)) == grammar.canonical(spec)
    assert not any("there is" in t and " is " in t.removeprefix("there is") for t in texts)
    assert max(len(t.split()) for t in texts) + 1 <= grammar.token_width(texts)
    assert grammar.token_width(["a red square"]) == grammar.MAX_WORDS + 1


def test_chain_facts_and_fact_ids():
    # square left of circle, circle above cross
    true = CaptionSpec((Mention(0, 0, 0), Mention(1, 2, 1), Mention(3, 1, 1)), 0, (2,))
    assert relevance(SCENE, true) == 1.0 and true.num_facts == 5
    wrong = CaptionSpec(true.mentions, 0, (3,))  # ... circle below cross
    assert relevance(SCENE, wrong) == pytest.approx(4 / 5)
    ids = caption_fact_ids([true, CaptionSpec((Mention(0),))])
    assert ids.shape == (2, 5) and fact_columns(5) == ([0, 1, 3], [2, 4])
    assert (ids[1, 1:] == -1).all() and (ids[0] >= 0).all()
    assert caption_fact_ids([CaptionSpec((Mention(0), Mention(1)), 0)]).shape == (1, 3)  # today's width


def test_chain_world_truth_matches_the_scene_descriptions(chain_world):
    s = chain_world.test
    rng = torch.Generator().manual_seed(0)
    img = torch.randint(s.num_images, (400,), generator=rng)
    cap = torch.randint(s.num_captions, (400,), generator=rng)
    pairs = zip(img.tolist(), cap.tolist(), strict=True)
    expected = torch.tensor([relevance(s.scenes[i], s.captions[c]) for i, c in pairs])
    assert torch.allclose(s.relevance_pairs(img, cap), expected)
    own = s.relevance_pairs(s.caption_image, torch.arange(s.num_captions))
    assert (own == 1).all()


def test_contrast_groups_share_objects_and_captions_reject_siblings(chain_world):
    s = chain_world.train
    g = CHAIN.group_size
    fooled = 0
    for start in range(0, s.num_images, g):
        group = s.scenes[start : start + g]
        kinds = {tuple(sorted((o.shape, o.colour, o.size) for o in sc.objects)) for sc in group}
        keys = [layout_key(sc) for sc in group]
        assert len(kinds) == 1 and all(not a <= b for a in keys for b in keys if a is not b)
        for k in range(len(group)):
            for c in torch.nonzero(s.caption_image == start + k).flatten().tolist():
                spec = s.captions[c]
                assert len(spec.mentions) == 3 and all(m.colour is not None and m.size is not None
                                                        for m in spec.mentions)
                fooled += any(relevance(group[j], spec) == 1 for j in range(len(group)) if j != k)
    assert fooled <= 0.01 * s.num_captions  # the rare image without any discriminative chain falls back


def test_chain_flips_keep_the_words_and_are_false(chain_world):
    s = chain_world.test
    mp = minimal_pairs(s, per_kind=20, kinds=("flip_relation", "swap_colour"))
    assert len(mp.kind) == 40
    for p in range(len(mp.kind)):
        t, f = (grammar.parse(grammar.detokenize(x[p])) for x in (mp.tokens_true, mp.tokens_false))
        for attr in ("shape", "colour", "size"):  # same attributes (words up to synonyms), other binding or order
            assert Counter(getattr(m, attr) for m in t.mentions) == Counter(getattr(m, attr) for m in f.mentions)
        assert relevance(s.scenes[int(mp.image[p])], t) == 1 and relevance(s.scenes[int(mp.image[p])], f) < 1
    rng = np.random.default_rng(0)
    assert perturb(SCENE, CaptionSpec((Mention(0, 0, 0), Mention(1, 2, 1), Mention(3, 1, 1)), 0, (2,)),
                   "flip_relation", rng) is not None


def test_default_world_is_unchanged_by_the_new_options(tiny_world):
    again = build_split(replace(tiny_world.config, caption_style="pair", group_size=1), "val")
    assert again.texts == tiny_world.val.texts and torch.equal(again.tokens, tiny_world.val.tokens)
    assert tiny_world.val.fact_ids.shape[1] == 3


# --------------------------------------------------------------------------------------------------- near-misses


def test_several_near_misses_per_caption(tiny_world):
    split = tiny_world.train
    near = build_near_misses(split)
    cap = torch.arange(40)
    img = split.caption_image[cap]
    gen = torch.Generator().manual_seed(0)
    tokens, row, kind = near.sample_many(cap, gen, count=0)
    assert len(row) == int(near.available[cap].sum())
    tokens2, row2, kind2 = near.sample_many(cap, gen, count=2)
    per_caption = torch.bincount(row2, minlength=40)
    assert (per_caption <= 2).all() and (per_caption == near.available[cap].sum(1).clamp(max=2)).all()
    assert all(len(set(kind2[row2 == r].tolist())) == int(per_caption[r]) for r in range(40))
    assert near.available[cap[row2], kind2].all()
    flips = near.kinds.index("flip_relation")
    toks, truth = near_miss_columns(split, near, img, cap, gen, count=1, flip_weight=1e6)
    assert truth.shape == (40, len(toks))
    _, _, k = near.sample_with_kind(cap, gen, torch.tensor([1.0] * 2 + [1e6] + [1.0] * 3))
    assert (k[near.available[cap, flips]] == flips).all()
    assert not truth[torch.arange(len(toks)), torch.arange(len(toks))].any()  # own image: every near-miss false


def test_group_batches_hold_whole_contrast_groups(chain_world):
    from workbench.training.batches import sample_group_pairs, sample_pairs

    s = chain_world.train
    assert torch.equal(s.groups, torch.arange(s.num_images) // CHAIN.group_size)
    img, cap = sample_group_pairs(s, 12, torch.Generator().manual_seed(0))
    assert len(set(img.tolist())) == 12 and (s.caption_image[cap] == img).all()
    assert (torch.bincount(s.groups[img]) % CHAIN.group_size == 0).all()  # 4 whole groups of 3
    assert chain_world.train.groups is not None and build_split(WorldConfig(n_val=5), "val").groups is None
    tiny = build_split(WorldConfig(n_val=8), "val")  # no groups: plain random batches
    a = sample_group_pairs(tiny, 4, torch.Generator().manual_seed(1))
    b = sample_pairs(tiny, 4, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
