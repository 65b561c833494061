"""The built-in world: determinism, sizes and ids, config errors, ground truth checked against the scene description
(pure-Python ``scene.facts`` / ``relevance`` as the oracle), near-misses, rendering, grounding and layout targets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from workbench.data import grammar
from workbench.data.nearmiss import build_near_misses
from workbench.data.perturbations import PERTURBATIONS, TRAINING_PERTURBATIONS, minimal_pairs, perturb
from workbench.data.render import BACKGROUND, CELL, IMAGE_SIZE, RGB, render_scene, shape_mask
from workbench.data.scene import COLOURS, GRID, SIZES, CaptionSpec, Mention, Obj, Scene, facts, relevance
from workbench.data.world import N_MENTIONS, SemanticRelation, Split, WorldConfig, build_world

ALL_KINDS = tuple(dict.fromkeys(PERTURBATIONS + TRAINING_PERTURBATIONS))
SPLIT_NAMES = ("train", "val", "test")


def own_scene(split: Split, c: int) -> Scene:
    return split.scenes[int(split.caption_image[c])]


def hand_split(scenes: list[Scene], texts: list[str], owner: list[int]) -> Split:
    """A Split built by hand from scene descriptions and caption texts (specs parsed from the texts)."""
    return Split(
        name="test", scenes=scenes, captions=[grammar.parse(t) for t in texts], texts=texts,
        images=torch.zeros(len(scenes), 3, IMAGE_SIZE, IMAGE_SIZE), tokens=grammar.tokenize(texts),
        caption_image=torch.tensor(owner), image_ids=torch.arange(len(scenes)), caption_ids=torch.arange(len(texts)),
    )


# ------------------------------------------------------------------------------------ determinism and sizes


def test_same_seed_gives_identical_splits(tiny_world):
    again = build_world(tiny_world.config)
    for name in SPLIT_NAMES:
        a, b = tiny_world.split(name), again.split(name)
        assert a.scenes == b.scenes and a.captions == b.captions and a.texts == b.texts
        assert torch.equal(a.images, b.images)  # bitwise
        for attr in ("tokens", "caption_image", "image_ids", "caption_ids"):
            assert torch.equal(getattr(a, attr), getattr(b, attr)), attr


def test_different_seed_gives_different_splits(tiny_world):
    other = build_world(replace(tiny_world.config, seed=1))
    for name in SPLIT_NAMES:
        a, b = tiny_world.split(name), other.split(name)
        assert a.texts != b.texts and a.scenes != b.scenes
        assert not torch.equal(a.images, b.images)


def test_a_split_depends_only_on_seed_and_its_name(tiny_world):
    bigger_train = build_world(replace(tiny_world.config, n_train=230))
    assert bigger_train.test.texts == tiny_world.test.texts
    assert torch.equal(bigger_train.test.images, tiny_world.test.images)
    assert torch.equal(bigger_train.test.caption_ids - bigger_train.test.caption_ids[0],
                       tiny_world.test.caption_ids - tiny_world.test.caption_ids[0])


def test_splits_have_configured_sizes_and_five_distinct_captions_per_image(tiny_world):
    cfg = tiny_world.config
    for name in SPLIT_NAMES:
        s = tiny_world.split(name)
        assert s.num_images == cfg.size(name) == len(s.scenes) == s.images.shape[0]
        assert s.num_captions == len(s.texts) == s.tokens.shape[0] == s.caption_image.shape[0]
        assert torch.equal(torch.bincount(s.caption_image, minlength=s.num_images),
                           torch.full((s.num_images,), cfg.captions_per_image))
        for i in range(s.num_images):
            texts = [s.texts[c] for c in torch.nonzero(s.caption_image == i).flatten().tolist()]
            assert len(set(texts)) == len(texts)


def test_ids_are_unique_across_splits(tiny_world):
    image_ids = torch.cat([tiny_world.split(n).image_ids for n in SPLIT_NAMES])
    caption_ids = torch.cat([tiny_world.split(n).caption_ids for n in SPLIT_NAMES])
    assert torch.equal(image_ids, torch.arange(len(image_ids)))
    assert torch.equal(caption_ids, torch.arange(len(caption_ids)))
    s = tiny_world.val
    assert torch.equal(s.image_index(s.image_ids.flip(0)), torch.arange(s.num_images).flip(0))
    with pytest.raises(KeyError, match="not in split 'val'"):
        s.caption_index(tiny_world.train.caption_ids[:3])


def test_world_config_changes_what_is_sampled():
    two = build_world(WorldConfig(n_train=40, n_val=1, n_test=1, p_three_objects=0.0, p_relational=0.0, p_colour=0.0))
    three = build_world(WorldConfig(n_train=40, n_val=1, n_test=1, p_three_objects=1.0, p_size=1.0))
    assert {len(s.objects) for s in two.train.scenes} == {2}
    assert {len(s.objects) for s in three.train.scenes} == {3}
    kinds = {(len(c.mentions), c.relation is not None) for c in two.train.captions}
    assert kinds == {(1, False), (2, False)}  # conjunctions and single objects only
    for c in two.train.captions:  # single-object captions always name the colour; p_colour=0 drops it elsewhere
        assert all((m.colour is not None) == (len(c.mentions) == 1) for m in c.mentions)
    assert all(c.relation is not None for c in three.train.captions)
    assert all(m.size is not None for c in three.train.captions for m in c.mentions)


def test_scenes_have_distinct_cells_and_kinds(tiny_world):
    for s in tiny_world.train.scenes:
        assert 2 <= len(s.objects) <= 3
        assert len({(o.row, o.col) for o in s.objects}) == len(s.objects)
        assert len({(o.shape, o.colour) for o in s.objects}) == len(s.objects)


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "field, value",
    [("n_train", -1), ("n_val", 0), ("n_test", -5), ("captions_per_image", 0), ("captions_per_image", 21),
     ("seed", -1), ("p_three_objects", 1.5), ("p_relational", -0.1), ("p_colour", 2.0), ("p_size", -1.0),
     ("noise", -0.1)],
)
def test_world_config_errors_name_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be [<>]= .*got {value}"):
        WorldConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("n_train", 2.5), ("seed", "0"), ("p_size", "half")])
def test_world_config_type_errors_name_the_field(field, value):
    with pytest.raises(TypeError, match=rf"^{field} must be"):
        WorldConfig(**{field: value})


def test_other_bad_inputs_name_the_argument(tiny_world):
    with pytest.raises(ValueError, match="split must be one of .* got 'dev'"):
        tiny_world.split("dev")
    with pytest.raises(ValueError, match="kind must be one of .* got 'negate'"):
        perturb(tiny_world.val.scenes[0], tiny_world.val.captions[0], "negate", np.random.default_rng(0))
    with pytest.raises(ValueError, match="per_kind must be >= 1, got 0"):
        minimal_pairs(tiny_world.val, per_kind=0)
    with pytest.raises(ValueError, match="1 or 2 mentions, got 3"):
        CaptionSpec((Mention(0), Mention(1), Mention(2)))
    with pytest.raises(ValueError, match="relation needs exactly 2 mentions"):
        CaptionSpec((Mention(0),), relation=0)


# -------------------------------------------------------------------------- truth against the scene description

# Scene A: a big red square top-left, a small blue circle in the middle row, right column.
RED_SQUARE, BLUE_CIRCLE = Obj(shape=0, colour=0, size=1, row=0, col=0), Obj(shape=1, colour=2, size=0, row=1, col=2)
SCENE_A = Scene((RED_SQUARE, BLUE_CIRCLE))
# Scene B: two squares in the top row: red on the left, blue on the right.
SCENE_B = Scene((Obj(0, 0, 0, 0, 0), Obj(0, 2, 1, 0, 2)))
HAND_CASES = [  # (scene, text, facts by hand)
    (SCENE_A, "a red square left of a blue circle", [True, True, True]),
    (SCENE_A, "a blue circle is to the right of a big red square", [True, True, True]),
    (SCENE_A, "a red square right of a blue circle", [True, True, False]),  # relation the wrong way round
    (SCENE_A, "a blue circle left of a red square", [True, True, False]),
    (SCENE_A, "a blue circle below a red square", [True, True, True]),
    (SCENE_A, "a red square under a blue circle", [True, True, False]),
    (SCENE_A, "a red square above a green circle", [True, False, False]),  # 1/3
    (SCENE_A, "a small red square over a green ball", [False, False, False]),
    (SCENE_A, "a red square and a green triangle", [True, False]),  # 1/2
    (SCENE_A, "there is a blue square and a red circle", [False, False]),  # swapped colours
    (SCENE_A, "a square above a circle", [True, True, True]),  # partial mentions match any colour / size
    (SCENE_A, "a small square", [False]),
    (SCENE_A, "a large square", [True]),
    (SCENE_A, "a little blue ball", [True]),
    (SCENE_B, "a square left of a square", [True, True, True]),  # two *different* squares
    (SCENE_B, "a blue square left of a square", [True, True, False]),  # the only square right of... is itself
    (SCENE_B, "a square right of a small red square", [True, True, True]),
    (SCENE_B, "a square above a square", [True, True, False]),  # same row: neither is above the other
    (SCENE_B, "a red box left of a big blue square", [True, True, True]),
]


@pytest.mark.parametrize("scene, text, expected", HAND_CASES)
def test_facts_and_relevance_on_hand_made_scenes(scene, text, expected):
    spec = grammar.parse(text)
    assert facts(scene, spec) == expected
    assert relevance(scene, spec) == pytest.approx(sum(expected) / len(expected))


def test_vectorised_relevance_on_hand_made_scenes():
    texts = [t for _, t, _ in HAND_CASES]
    split = hand_split([SCENE_A, SCENE_B], texts, [0 if s is SCENE_A else 1 for s, _, _ in HAND_CASES])
    want = torch.tensor([[sum(f) / len(f) if s is scene else relevance(scene, grammar.parse(t))
                          for s, t, f in HAND_CASES] for scene in (SCENE_A, SCENE_B)])
    got = split.relevance_block(torch.arange(2), torch.arange(len(texts)))
    torch.testing.assert_close(got, want.float())
    assert got[0, 6].item() == pytest.approx(1 / 3) and got[0, 8].item() == pytest.approx(1 / 2)
    assert got[1, 15].item() == pytest.approx(2 / 3)
    torch.testing.assert_close(SemanticRelation(split).dense(), want == 1.0)


def test_every_caption_is_true_for_its_own_scene(tiny_world):
    for name in SPLIT_NAMES:
        s = tiny_world.split(name)
        for c, spec in enumerate(s.captions):
            scene = own_scene(s, c)
            assert all(facts(scene, spec)), (scene.describe(), s.texts[c])
            assert relevance(scene, grammar.parse(s.texts[c])) == 1.0  # the words, not only the spec


def test_every_caption_text_parses_back_to_its_spec(tiny_world):
    for name in SPLIT_NAMES:
        s = tiny_world.split(name)
        for spec, text in zip(s.captions, s.texts, strict=True):
            assert grammar.canonical(grammar.parse(text)) == grammar.canonical(spec), text


def _expected_swap(spec: CaptionSpec, kind: str) -> CaptionSpec | None:
    """What the deterministic kinds must produce (before the 'false for the scene' filter)."""
    m = spec.mentions
    if kind == "flip_relation":
        return CaptionSpec(m[::-1], spec.relation) if spec.relation is not None else None
    if len(m) != 2:
        return None
    if kind == "swap_colour":
        if m[0].colour is None or m[1].colour is None:
            return None
        return CaptionSpec((replace(m[0], colour=m[1].colour), replace(m[1], colour=m[0].colour)), spec.relation)
    return CaptionSpec((replace(m[0], shape=m[1].shape), replace(m[1], shape=m[0].shape)), spec.relation)


def _changed(spec: CaptionSpec, new: CaptionSpec) -> list[tuple[int, str]]:
    return [(j, a) for j, (x, y) in enumerate(zip(spec.mentions, new.mentions, strict=True))
            for a in ("shape", "colour", "size") if getattr(x, a) != getattr(y, a)]


def test_perturb_makes_false_near_misses_of_every_kind(tiny_world):
    s, rng, made = tiny_world.val, np.random.default_rng(0), dict.fromkeys(ALL_KINDS, 0)
    for c, spec in enumerate(s.captions):
        scene = own_scene(s, c)
        for kind in ALL_KINDS:
            new = perturb(scene, spec, kind, rng)
            if kind in ("swap_colour", "swap_shape", "flip_relation"):  # exact oracle, None included
                want = _expected_swap(spec, kind)
                assert new == (want if want is not None and relevance(scene, want) < 1 else None)
            if new is None:
                continue
            made[kind] += 1
            assert relevance(scene, new) < 1.0, (kind, scene.describe(), new)
            assert new.relation == spec.relation and len(new.mentions) == len(spec.mentions)
            if kind.startswith("change_"):
                changed = _changed(spec, new)
                assert len(changed) == 1
                if kind != "change_attribute":
                    assert changed[0][1] == kind.removeprefix("change_")
    assert all(n > 0 for n in made.values()), made


def _decode_fact_ids(row: torch.Tensor) -> CaptionSpec:
    """Invert ``caption_fact_ids`` for one caption (test oracle): long [3] -> CaptionSpec."""

    def mention(i: int) -> Mention:
        z, rest = i % (len(SIZES) + 1), i // (len(SIZES) + 1)
        c, shape = rest % (len(COLOURS) + 1), rest // (len(COLOURS) + 1)
        return Mention(shape, None if c == 0 else c - 1, None if z == 0 else z - 1)

    m1, m2, rel = row.tolist()
    mentions = (mention(m1),) if m2 < 0 else (mention(m1), mention(m2))
    return CaptionSpec(mentions, None if rel < 0 else rel // (N_MENTIONS * N_MENTIONS))


def test_build_near_misses_are_false_for_their_image_and_say_what_their_facts_say(tiny_world):
    s = tiny_world.val
    nm = build_near_misses(s, seed=0)
    assert nm.kinds == TRAINING_PERTURBATIONS and nm.tokens.shape[:2] == nm.available.shape == (s.num_captions, 6)
    assert nm.available.float().mean(0).min() > 0.2  # every kind applies to a good share of captions
    own = s.caption_image
    for c in range(s.num_captions):
        for k in range(len(nm.kinds)):
            spec = _decode_fact_ids(nm.fact_ids[c, k])
            text = grammar.detokenize(nm.tokens[c, k])
            assert grammar.canonical(grammar.parse(text)) == grammar.canonical(spec), text
            truth = nm.truth(s, own[c : c + 1], torch.tensor([c]), torch.tensor([k])).item()
            assert truth == (relevance(own_scene(s, c), spec) == 1.0)
            assert truth == (not nm.available[c, k])  # unavailable slots hold the true caption itself


def test_near_miss_truth_agrees_with_the_oracle_on_other_images(tiny_world):
    s, gen = tiny_world.val, torch.Generator().manual_seed(0)
    nm = build_near_misses(s, seed=1)
    img = torch.randperm(s.num_images, generator=gen)[:20]
    cap = torch.randint(s.num_captions, (60,), generator=gen)
    kind = torch.randint(len(nm.kinds), (60,), generator=gen)
    got = nm.truth(s, img, cap, kind)
    want = torch.tensor([[relevance(s.scenes[i], _decode_fact_ids(nm.fact_ids[c, k])) == 1.0
                          for c, k in zip(cap.tolist(), kind.tolist(), strict=True)] for i in img.tolist()])
    assert torch.equal(got, want)


def test_minimal_pairs_are_false_for_their_image(tiny_world):
    s = tiny_world.test
    mp = minimal_pairs(s, per_kind=40, seed=3, kinds=ALL_KINDS)
    assert len(mp.kind) == len(mp.texts_false) == len(mp.image) == mp.tokens_false.shape[0]
    assert {k: mp.kind.count(k) for k in ALL_KINDS} == dict.fromkeys(ALL_KINDS, 40)
    assert torch.equal(s.caption_image[mp.caption], mp.image)
    for p, text in enumerate(mp.texts_false):
        scene = s.scenes[int(mp.image[p])]
        assert relevance(scene, grammar.parse(text)) < 1.0, (mp.kind[p], scene.describe(), text)
        assert grammar.detokenize(mp.tokens_false[p]) == text
        true_text = grammar.detokenize(mp.tokens_true[p])
        assert grammar.canonical(grammar.parse(true_text)) == grammar.canonical(s.captions[int(mp.caption[p])])
    again = minimal_pairs(s, per_kind=40, seed=3, kinds=ALL_KINDS)
    assert again.texts_false == mp.texts_false


def test_vectorised_truth_agrees_with_the_oracle_on_random_pairs(tiny_world):
    s, gen = tiny_world.train, torch.Generator().manual_seed(0)
    img = torch.randint(s.num_images, (3000,), generator=gen)
    cap = torch.randint(s.num_captions, (3000,), generator=gen)
    pairs = zip(img.tolist(), cap.tolist(), strict=True)
    want = torch.tensor([relevance(s.scenes[i], s.captions[c]) for i, c in pairs])
    torch.testing.assert_close(s.relevance_pairs(img, cap), want.float())
    assert torch.equal(SemanticRelation(s).pairs(img, cap), want == 1.0)
    assert (want == 1.0).sum() > 10 and ((want > 0) & (want < 1)).sum() > 100  # cross-image truths exist
    assert ((want == 1.0) & (s.caption_image[cap] != img)).any()  # false negatives of the COCO protocol

    qi, qc = img[:40], cap[:70]
    block = torch.tensor([[relevance(s.scenes[i], s.captions[c]) for c in qc.tolist()] for i in qi.tolist()])
    torch.testing.assert_close(s.relevance_block(qi, qc), block.float())
    assert torch.equal(SemanticRelation(s).block(qi, qc), block == 1.0)
    counts = torch.tensor([[sum(facts(s.scenes[i], s.captions[c])) for c in qc.tolist()] for i in qi.tolist()])
    assert torch.equal(s.true_facts_block(qi, qc), counts)


def test_coco_relation_is_the_written_for_image(tiny_world):
    s = tiny_world.val
    dense = s.relations()["coco"].dense()
    assert torch.equal(dense, s.caption_image[None, :] == torch.arange(s.num_images)[:, None])
    assert (s.relations()["semantic"].dense() | ~dense).all()  # own captions are always semantically true


# ------------------------------------------------------------------------------------------------- rendering


def _cell(img: np.ndarray | torch.Tensor, row: int, col: int):
    return img[:, row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]


def test_render_without_noise_draws_exact_colours_in_the_right_cells():
    img = render_scene(SCENE_A, np.random.default_rng(0), noise=0.0, jitter=0.0)
    assert img.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and img.dtype == np.float32
    for o in SCENE_A.objects:
        mask = shape_mask(o.shape, o.size)
        cell = _cell(img, o.row, o.col)
        np.testing.assert_allclose(cell[:, mask == 1], np.repeat(RGB[o.colour][:, None], (mask == 1).sum(), 1),
                                   atol=1e-6)
        np.testing.assert_allclose(cell[:, mask == 0], np.repeat(BACKGROUND[:, None], (mask == 0).sum(), 1), atol=1e-6)
    occupied = {(o.row, o.col) for o in SCENE_A.objects}
    for r in range(GRID):
        for c in range(GRID):
            if (r, c) not in occupied:
                np.testing.assert_allclose(_cell(img, r, c), np.broadcast_to(BACKGROUND[:, None, None], (3, 8, 8)))


def test_world_images_show_each_object_in_its_cell(tiny_world):
    s = tiny_world.train
    assert s.images.shape == (s.num_images, 3, IMAGE_SIZE, IMAGE_SIZE) and s.images.dtype == torch.float32
    assert s.images.min() >= 0 and s.images.max() <= 1
    palette = torch.from_numpy(np.concatenate([RGB, BACKGROUND[None]]))  # [7, 3]
    for i, scene in enumerate(s.scenes):
        occupied = {}
        for o in scene.objects:
            mask = torch.from_numpy(shape_mask(o.shape, o.size))
            cell = _cell(s.images[i], o.row, o.col)
            background = (1 - mask) * torch.from_numpy(BACKGROUND)[:, None, None]
            colour = ((cell - background) * mask).sum((1, 2)) / (mask * mask).sum()  # unmixed object colour [3]
            assert (colour - torch.from_numpy(RGB[o.colour])).abs().max() < 0.3, (i, o)  # jitter std 0.06
            assert torch.cdist(colour[None], palette).argmin().item() == o.colour
            occupied[(o.row, o.col)] = True
        for r in range(GRID):
            for c in range(GRID):
                if (r, c) not in occupied:
                    mean = _cell(s.images[i], r, c).mean((1, 2))
                    assert (mean - torch.from_numpy(BACKGROUND)).abs().max() < 0.03, (i, r, c)


def test_shapes_and_sizes_have_distinct_masks():
    masks = {(s, z): shape_mask(s, z) for s in range(4) for z in range(2)}
    for key, m in masks.items():
        assert m.shape == (CELL, CELL) and m.min() >= 0 and m.max() <= 1
        assert all(not np.allclose(m, other) for k, other in masks.items() if k != key)
    assert all(masks[(s, 1)].sum() > masks[(s, 0)].sum() for s in range(4))
    with pytest.raises(ValueError, match="shape must be an index in \\[0, 4\\), got 7"):
        shape_mask(7, 0)


# -------------------------------------------------------------------------------------- grounding and layout

# Scene C: red square (0,0), small blue circle (1,2), red triangle (2,0). Scene D: red square (0,1), blue square (2,1).
SCENE_C = Scene((Obj(0, 0, 1, 0, 0), Obj(1, 2, 0, 1, 2), Obj(2, 0, 1, 2, 0)))
SCENE_D = Scene((Obj(0, 0, 1, 0, 1), Obj(0, 2, 0, 2, 1)))
GROUNDING_CASES = [  # (scene, text, shape-word positions (with [CLS] at 0), cells of mention 1 / 2, layout code)
    (SCENE_C, "a red square left of a blue circle", (3, 8), ({0}, {5}), 3 * 2 + 2),  # circle: lower and right
    (SCENE_C, "there is a blue circle to the right of a red square", (5, 12), ({5}, {0}), 0),  # upper and left
    (SCENE_C, "a red square and a red triangle", (3, 7), ({0}, {6}), 3 * 2 + 1),  # below, same column
    (SCENE_C, "a little blue circle", (4, -1), ({5}, set()), -1),  # one mention: no layout
    (SCENE_D, "a square above a blue square", (2, 6), ({1, 7}, {7}), -1),  # "a square" is ambiguous
    (SCENE_D, "a blue box is below a red square", (3, 8), ({7}, {1}), 3 * 0 + 1),
]


def test_grounding_and_layout_targets_on_hand_checked_captions():
    split = hand_split([SCENE_C, SCENE_D], [t for _, t, *_ in GROUNDING_CASES],
                       [0 if s is SCENE_C else 1 for s, *_ in GROUNDING_CASES])
    positions, cells = split.grounding()
    assert positions.shape == (len(GROUNDING_CASES), 2) and cells.shape == (len(GROUNDING_CASES), 2, 9)
    for c, (_, text, pos, where, _) in enumerate(GROUNDING_CASES):
        assert tuple(positions[c].tolist()) == pos, text
        for j in range(2):
            assert set(torch.nonzero(cells[c, j]).flatten().tolist()) == where[j], (text, j)
    codes, readers = split.layout()
    assert codes.shape == readers.shape == (len(GROUNDING_CASES), 1)  # one pair of mentions (chains: two)
    assert codes[:, 0].tolist() == [code for *_, code in GROUNDING_CASES]
    for c, (_, text, *_) in enumerate(GROUNDING_CASES):  # the word before the second mention's "a", if any
        words = text.split()
        second = len(words) - 1 - words[::-1].index("a") if words.count("a") > 1 else None
        assert readers[c, 0] == (-1 if second is None else second), text


def test_grounding_targets_point_at_shape_words_and_matching_objects(tiny_world):
    s = tiny_world.val
    positions, cells = s.grounding()
    shape_ids = {grammar.WORD_ID[w] for options in grammar.SHAPE_WORDS.values() for w in options}
    layout = s.layout()[0][:, 0]
    for c in range(s.num_captions):
        scene, mentions = own_scene(s, c), grammar.parse(s.texts[c]).mentions
        for j, m in enumerate(mentions):
            assert int(s.tokens[c, positions[c, j]]) in shape_ids
            want = {o.row * GRID + o.col for o in scene.objects if m.matches(o)}
            assert set(torch.nonzero(cells[c, j]).flatten().tolist()) == want and want
        if len(mentions) == 1:
            assert positions[c, 1] == -1 and not cells[c, 1].any() and layout[c] == -1
        elif all(cells[c, j].sum() == 1 for j in range(2)):
            (a,), (b,) = ([o for o in scene.objects if m.matches(o)] for m in mentions)
            assert layout[c] == 3 * (np.sign(b.row - a.row) + 1) + np.sign(b.col - a.col) + 1
        else:
            assert layout[c] == -1
    assert (layout >= 0).float().mean() > 0.5
