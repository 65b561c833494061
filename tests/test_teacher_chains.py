"""The teacher on the default world (contrast-chain-v1): chain captions through the model and the pair scorer, grounding
and layout targets of chains, teacher training steps on chains, the world -> committed teacher mapping, and the
ambiguous-v1 teacher that still loads and scores its world."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch

from workbench.data import grammar
from workbench.data.nearmiss import build_near_misses
from workbench.data.perturbations import minimal_pairs
from workbench.data.scene import GRID, Obj, Scene
from workbench.data.world import WORLD_PRESETS as NAMED_WORLDS
from workbench.data.world import Split, build_world, world_preset
from workbench.evaluation.evaluate import evaluate_teacher
from workbench.experiments import (
    DEFAULT_TEACHER,
    DEFAULT_WORLD,
    WORLD_PRESETS,
    WORLD_TEACHERS,
    teacher_for_world,
    world_name,
)
from workbench.io import read_json
from workbench.models.teacher import CrossEncoder, TeacherConfig, load_teacher
from workbench.training.common import seed_everything
from workbench.training.teacher import (
    TeacherTrainConfig,
    binding_step,
    full_step,
    grounding_loss,
    layout_loss,
    same_width,
)

OLD_TEACHER = WORLD_TEACHERS["ambiguous-v1"]


@pytest.fixture(scope="module")
def chain_world():
    """A tiny contrast-chain-v1 world (groups of 3, chain captions up to 22 words)."""
    return build_world(world_preset("contrast-chain-v1", n_train=60, n_val=15, n_test=15))


def small_teacher(**changes) -> CrossEncoder:
    cfg = TeacherConfig(dim=32, heads=4, mlp=48, fusion_layers=2, embed_dim=24, **changes)
    torch.manual_seed(0)
    return CrossEncoder(cfg).eval()


# ------------------------------------------------------------------------------------------- chains in the model


def test_teacher_scores_chain_captions(chain_world):
    split = chain_world.train
    assert split.tokens.shape[1] > grammar.MAX_WORDS + 1  # chains are wider than the old 16 columns
    teacher = small_teacher()
    assert teacher.config.max_words >= 22 and teacher.text_embed.pos.shape[0] == teacher.config.max_words + 1
    img, cap = torch.arange(6), torch.arange(6) * 5
    scores = teacher.score(split.images[img], split.tokens[cap])
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    longest = int((split.tokens[cap] != grammar.PAD).sum(1).max())
    torch.testing.assert_close(teacher.score(split.images[img], split.tokens[cap, :longest]), scores)  # pads masked
    scorer = teacher.pair_scorer(split)
    torch.testing.assert_close(scorer(img, cap), scores)
    # minimal pairs of chains (their own token width) go through the same model
    pairs = minimal_pairs(chain_world.val, per_kind=5)
    acc = evaluate_teacher(teacher, chain_world.val, pairs)["minimal_pairs"]
    assert set(acc) == {"swap_colour", "swap_shape", "flip_relation", "change_attribute", "mean"}


def test_teacher_refuses_captions_longer_than_it_reads(chain_world):
    narrow = small_teacher(max_words=grammar.MAX_WORDS)
    with pytest.raises(ValueError, match=r"reads captions of up to 15 words \(max_words\), got token rows 23 wide"):
        narrow.score(chain_world.train.images[:2], chain_world.train.tokens[:2])


def test_teacher_config_recorded_without_max_words_reads_15_words():
    recorded = asdict(TeacherConfig())
    del recorded["max_words"]
    assert TeacherConfig.from_dict(recorded).max_words == grammar.MAX_WORDS
    assert TeacherConfig.from_dict(asdict(TeacherConfig(max_words=30))).max_words == 30
    with pytest.raises(ValueError, match="max_words must be >= 1, got 0"):
        TeacherConfig(max_words=0)


# ------------------------------------------------------------------------------------- grounding and layout of chains

# red square (0,0), small blue circle (1,2), big green cross (2,1)
SCENE = Scene((Obj(0, 0, 1, 0, 0), Obj(1, 2, 0, 1, 2), Obj(3, 1, 1, 2, 1)))
CHAINS = [  # text, shape-word positions ([CLS] = 0), layout-reading positions, layout codes (pair k: k+1 vs k)
    ("a big red square left of a small blue circle above a big green cross", (4, 10, 15), (6, 11),
     (3 * 2 + 2, 3 * 2 + 0)),
    ("there is a big green cross to the left of a small blue circle below a big red square", (6, 14, 19), (10, 15),
     (3 * 0 + 2, 3 * 0 + 0)),
    ("a big green plus is left of a little blue ball below a large red box", (4, 11, 16), (7, 12),
     (3 * 0 + 2, 3 * 0 + 0)),
]


def chain_split() -> Split:
    texts = [t for t, *_ in CHAINS] + ["a red square left of a blue circle"]
    return Split(name="test", scenes=[SCENE], captions=[grammar.parse(t) for t in texts], texts=texts,
                 images=torch.zeros(1, 3, 24, 24), tokens=grammar.tokenize(texts, grammar.token_width(texts)),
                 caption_image=torch.zeros(len(texts), dtype=torch.long), image_ids=torch.arange(1),
                 caption_ids=torch.arange(len(texts)))


def test_grounding_and_layout_targets_cover_every_mention_of_a_chain():
    split = chain_split()
    positions, cells = split.grounding()
    codes, readers = split.layout()
    assert positions.shape == (4, 3) and cells.shape == (4, 3, 9) and codes.shape == readers.shape == (4, 2)
    for c, (text, pos, read, code) in enumerate(CHAINS):
        words = ["[CLS]"] + text.split()
        assert tuple(positions[c].tolist()) == pos and all(words[p] in ("square", "circle", "cross", "plus", "ball",
                                                                          "box") for p in pos)
        assert tuple(readers[c].tolist()) == read and all(words[p + 1] == "a" for p in read)
        assert tuple(codes[c].tolist()) == code, text
        for j, mention in enumerate(grammar.parse(text).mentions):  # one object each: its cell only
            (obj,) = [o for o in SCENE.objects if mention.matches(o)]
            assert torch.nonzero(cells[c, j]).flatten().tolist() == [obj.row * GRID + obj.col]
    # a two-mention caption in the same split: the third slot is empty, its layout is the first pair's
    assert positions[3].tolist() == [3, 8, -1] and not cells[3, 2].any()
    assert codes[3].tolist() == [3 * 2 + 2, -1] and readers[3].tolist() == [5, -1]


def test_grounding_targets_of_a_generated_chain_world(chain_world):
    s = chain_world.val
    positions, cells = s.grounding()
    codes, readers = s.layout()
    assert positions.shape[1] == 3 and (positions >= 0).all()  # every caption names all three objects
    assert (codes >= 0).all()  # all attributes named and (shape, colour) distinct: every mention is one object
    shape_ids = {grammar.WORD_ID[w] for options in grammar.SHAPE_WORDS.values() for w in options}
    assert all(int(s.tokens[c, p]) in shape_ids for c in range(s.num_captions) for p in positions[c].tolist())
    assert (s.tokens.gather(1, readers + 1) == grammar.WORD_ID["a"]).all()
    assert (cells.sum(-1) == 1).all()


def test_teacher_training_steps_on_chains(chain_world):
    split = chain_world.train
    teacher = CrossEncoder(TeacherConfig(dim=32, heads=4, mlp=48, fusion_layers=2, embed_dim=24))
    near = build_near_misses(split, seed=0)
    flip = near.kinds.index("flip_relation")
    assert near.available[:, flip].all()  # every chain has a flipped-relation near-miss
    cfg = TeacherTrainConfig(batch=8, weight_layout=1.0)
    gen = seed_everything(0)
    img = torch.arange(8)
    cap = torch.searchsorted(split.caption_image, img)
    for step in (binding_step, full_step):
        terms = step(teacher, split, near, img, cap, gen, cfg)
        assert {"itm_loss", "ground_loss", "layout_loss"} <= set(terms), step.__name__
        sum(terms.values()).backward()
        assert all(torch.isfinite(t) for t in terms.values())
    fused = teacher.fuse(teacher.encode_image(split.images[img]), *teacher.encode_text(split.tokens[cap]))
    assert grounding_loss(teacher, fused, split, cap) > 0 and layout_loss(teacher, fused, split, cap) > 0
    a, b = same_width(torch.ones(2, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long))
    assert a.shape == (2, 5) and (a[:, 3:] == grammar.PAD).all() and b.shape == (1, 5)


# ------------------------------------------------------------------------------------ which teacher for which world


def test_world_presets_and_their_teachers():
    assert WORLD_PRESETS["default"] == NAMED_WORLDS[DEFAULT_WORLD] == NAMED_WORLDS["contrast-chain-v1"]
    assert WORLD_PRESETS["smoke"] == replace(NAMED_WORLDS[DEFAULT_WORLD], n_train=400, n_val=100, n_test=200)
    assert set(NAMED_WORLDS) <= set(WORLD_PRESETS) and set(WORLD_TEACHERS) == set(NAMED_WORLDS)
    assert world_name(WORLD_PRESETS["default"]) == world_name(WORLD_PRESETS["smoke"]) == "contrast-chain-v1"
    assert world_name(world_preset("ambiguous-v1", seed=3, n_train=10)) == "ambiguous-v1"
    assert world_name(replace(WORLD_PRESETS["default"], p_size=0.5)) is None
    assert teacher_for_world(WORLD_PRESETS["smoke"]) == DEFAULT_TEACHER == WORLD_TEACHERS["contrast-chain-v1"]
    assert teacher_for_world(world_preset("ambiguous-v1", n_train=10)) == OLD_TEACHER
    assert teacher_for_world(replace(WORLD_PRESETS["default"], p_size=0.5)) == DEFAULT_TEACHER  # chains: default
    for name, folder in WORLD_TEACHERS.items():  # each committed teacher was trained on its world
        recorded = read_json(folder / "config.json")["world"]
        assert world_name(replace(NAMED_WORLDS[name], **recorded)) == name, name


def test_the_ambiguous_v1_teacher_still_loads_and_scores_its_world():
    teacher = load_teacher(OLD_TEACHER)
    assert teacher.config.max_words == grammar.MAX_WORDS
    world = build_world(world_preset("ambiguous-v1", n_train=10, n_val=10, n_test=100))
    acc = evaluate_teacher(teacher, world.test, minimal_pairs(world.test, per_kind=50))["minimal_pairs"]
    assert acc["mean"] > 85, acc


def test_the_default_teacher_reads_the_default_world():
    teacher = load_teacher(DEFAULT_TEACHER)
    assert read_json(DEFAULT_TEACHER / "config.json")["world"]["caption_style"] == "chain"
    world = build_world(replace(WORLD_PRESETS["smoke"], n_train=3, n_val=3, n_test=60))
    acc = evaluate_teacher(teacher, world.test, minimal_pairs(world.test, per_kind=50))["minimal_pairs"]
    assert acc["mean"] > 85, acc
