"""Built-in models: shapes, normalisation, gradients (both towers, never the frozen stem), the cross-encoder's
encode/fuse/itm paths agreeing with ``score``, the cached PairScorer, config validation, and the committed teacher."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from workbench.data.grammar import MAX_WORDS, PAD, tokenize
from workbench.data.render import IMAGE_SIZE
from workbench.data.scene import Obj
from workbench.io import save_checkpoint
from workbench.models.stem import NUM_PATCHES, PatchStem, StemConfig, cell_labels, patchify
from workbench.models.student import DualEncoder, StudentConfig
from workbench.models.teacher import CrossEncoder, PairScorer, TeacherConfig, load_teacher

SMALL_STEM = StemConfig(hidden=32, dim=16)
SMALL_STUDENT = StudentConfig(dim=32, embed_dim=24, heads=4, mlp=48, image_layers=1, text_layers=1, stem=SMALL_STEM)


def small_teacher_config(fusion: str, fusion_layers: int = 2) -> TeacherConfig:
    return TeacherConfig(dim=32, heads=4, mlp=48, image_layers=1, text_layers=1, fusion=fusion,
                         fusion_layers=fusion_layers, embed_dim=24, stem=SMALL_STEM)


@pytest.fixture(scope="module")
def batch(tiny_world):
    """Images float [6, 3, 24, 24] and their first captions' tokens long [6, 16] (captions differ in length)."""
    s = tiny_world.val
    first = torch.tensor([int(torch.nonzero(s.caption_image == i)[0]) for i in range(6)])
    return s.images[:6], s.tokens[first]


def grads(module: torch.nn.Module, prefix: str) -> list[torch.Tensor | None]:
    return [p.grad for n, p in module.named_parameters() if n.startswith(prefix)]


def nonzero(g: torch.Tensor | None) -> bool:
    return g is not None and bool(g.abs().sum() > 0)


# -------------------------------------------------------------------------------------------------- stem


def test_patchify_cuts_row_major_cells():
    images = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    for k in range(NUM_PATCHES):
        r, c = divmod(k, 3)
        images[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = k
    patches = patchify(images)
    assert patches.shape == (2, NUM_PATCHES, 3 * 8 * 8)
    assert torch.equal(patches, torch.arange(NUM_PATCHES, dtype=torch.float)[None, :, None].expand_as(patches))
    with pytest.raises(ValueError, match=r"images must have shape .*3, 24, 24\), got \(2, 3, 24, 23\)"):
        patchify(torch.zeros(2, 3, 24, 23))


def test_cell_labels_by_hand():
    labels = cell_labels([Obj(shape=2, colour=5, size=1, row=2, col=1), Obj(0, 0, 0, 0, 0)])
    assert labels.shape == (9, 3)
    assert labels[7].tolist() == [3, 6, 2] and labels[0].tolist() == [1, 1, 1]
    assert labels[[1, 2, 3, 4, 5, 6, 8]].eq(0).all()


def test_stem_shapes_and_heads(batch):
    stem = PatchStem(SMALL_STEM)
    feats = stem(batch[0])
    assert feats.shape == (6, NUM_PATCHES, 16)
    logits = stem.predict(batch[0])
    assert {k: v.shape for k, v in logits.items()} == {"shape": (6, 9, 5), "colour": (6, 9, 7), "size": (6, 9, 3)}


# ----------------------------------------------------------------------------------------------- student


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_dual_encoder_shapes_and_normalisation(batch, pool):
    torch.manual_seed(0)
    student = DualEncoder(StudentConfig(**{**asdict(SMALL_STUDENT), "stem": SMALL_STEM, "pool": pool}))
    images, tokens = batch
    img, txt = student.encode_image(images), student.encode_text(tokens)
    assert img.shape == (6, 24) and txt.shape == (6, 24)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(6))
    assert student.logit_scale.ndim == 0 and student.logit_scale.item() == pytest.approx(1 / 0.07)
    sim = student.similarity(images[:4], tokens)
    assert sim.shape == (4, 6)
    torch.testing.assert_close(sim, student.logit_scale * img[:4] @ txt.T)


def test_logit_scale_is_positive_and_clamped():
    student = DualEncoder(SMALL_STUDENT)
    with torch.no_grad():
        student.log_scale.fill_(10.0)
    assert student.logit_scale.item() == SMALL_STUDENT.max_logit_scale
    with torch.no_grad():
        student.log_scale.fill_(-30.0)
    assert student.logit_scale.item() > 0


def test_default_student_runs(batch):
    student = DualEncoder()
    assert student.encode_image(batch[0]).shape == (6, StudentConfig().embed_dim)
    assert student.encode_text(batch[1]).shape == (6, StudentConfig().embed_dim)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_padding_does_not_change_text_embeddings(batch, pool):
    """Padded positions are masked: the same caption with fewer [PAD] columns embeds identically."""
    student = DualEncoder(StudentConfig(**{**asdict(SMALL_STUDENT), "stem": SMALL_STEM, "pool": pool})).eval()
    tokens = batch[1]
    longest = int((tokens != PAD).sum(1).max())
    assert longest < tokens.shape[1]
    torch.testing.assert_close(student.encode_text(tokens[:, :longest]), student.encode_text(tokens))
    alone = torch.cat([student.encode_text(t[None]) for t in tokens])  # batch-independent
    torch.testing.assert_close(alone, student.encode_text(tokens))


def test_student_gradients_reach_both_towers_but_never_the_stem(batch):
    torch.manual_seed(0)
    stem = PatchStem(SMALL_STEM)
    student = DualEncoder(SMALL_STUDENT, stem=stem)
    assert student.stem is stem and not any(p.requires_grad for p in stem.parameters())
    before = {k: v.clone() for k, v in stem.state_dict().items()}
    sim = student.similarity(*batch)
    loss = torch.nn.functional.cross_entropy(sim, torch.arange(6)) + torch.nn.functional.cross_entropy(sim.T,
                                                                                                       torch.arange(6))
    loss.backward()
    for prefix in ("patch_proj", "patch_pos", "image_cls", "image_blocks", "image_head", "text_embed", "text_blocks",
                   "text_head", "log_scale"):
        assert all(nonzero(g) for g in grads(student, prefix)), prefix
    assert all(g is None for g in grads(student, "stem"))
    opt = torch.optim.AdamW(student.parameters(), lr=0.1, weight_decay=0.1)
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in stem.state_dict().items())


# ----------------------------------------------------------------------------------------------- teacher


@pytest.mark.parametrize("fusion", ["cross", "single"])
def test_cross_encoder_paths_agree(batch, fusion):
    torch.manual_seed(0)
    teacher = CrossEncoder(small_teacher_config(fusion)).eval()
    images, tokens = batch
    img = teacher.encode_image(images)
    txt, pad = teacher.encode_text(tokens)
    assert img.shape == (6, NUM_PATCHES, 32) and txt.shape == (6, tokens.shape[1], 32)
    assert torch.equal(pad, tokens == PAD)
    fused = teacher.fuse(img, txt, pad)
    assert fused.shape == (6, tokens.shape[1], 32)
    scores = teacher.score(images, tokens)
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, teacher.itm(img, txt, pad))
    torch.testing.assert_close(scores, teacher.itm_from_fused(fused))
    single = torch.cat([teacher.score(images[i : i + 1], tokens[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(single, scores)  # each pair scored independently of the others in the batch
    longest = int((tokens != PAD).sum(1).max())
    torch.testing.assert_close(teacher.score(images, tokens[:, :longest]), scores)  # padding is masked
    shuffled = teacher.score(images, tokens.roll(1, 0))
    assert not torch.allclose(shuffled, scores)  # the score depends on the pairing
    assert teacher.itc_embed_image(img).shape == (6, 24) and teacher.itc_embed_text(txt).shape == (6, 24)
    torch.testing.assert_close(teacher.itc_embed_text(txt).norm(dim=-1), torch.ones(6))


@pytest.mark.parametrize("fusion", ["cross", "single"])
def test_cross_encoder_gradients_never_reach_the_stem(batch, fusion):
    torch.manual_seed(0)
    teacher = CrossEncoder(small_teacher_config(fusion))
    teacher.score(*batch).square().mean().backward()
    used = ["patch_proj", "patch_pos", "image_blocks", "text_embed", "text_blocks", "fusion_blocks", "itm_head"]
    for prefix in used + (["type_embed"] if fusion == "single" else []):
        assert all(nonzero(g) for g in grads(teacher, prefix)), prefix
    assert all(g is None for g in grads(teacher, "stem"))
    assert not any(p.requires_grad for p in teacher.stem.parameters())


@pytest.mark.parametrize("fusion, layers", [("cross", 2), ("cross", 1), ("cross", 3), ("single", 2)])
def test_pair_scorer_equals_direct_scores_and_encodes_each_item_once(tiny_world, fusion, layers):
    """The scorer's cached path (cross fusion: one-sided parts cached, last layer on [CLS] only) against the full
    forward pass of each pair, for fusion stacks whose first layer is also the last, or not."""
    torch.manual_seed(0)
    teacher = CrossEncoder(small_teacher_config(fusion, layers)).eval()
    s = tiny_world.val
    images, tokens = s.images[:10], s.tokens[:30]
    counts = {"images": 0, "texts": 0}
    encode_image, encode_text = teacher.encode_image, teacher.encode_text

    def count_images(x):
        counts["images"] += len(x)
        return encode_image(x)

    def count_texts(t):
        counts["texts"] += len(t)
        return encode_text(t)

    teacher.encode_image, teacher.encode_text = count_images, count_texts
    scorer = PairScorer(teacher, images, tokens, batch=4)
    gen = torch.Generator().manual_seed(0)
    img, cap = torch.randint(10, (25,), generator=gen), torch.randint(30, (25,), generator=gen)
    got = torch.cat([scorer(img, cap), scorer(img.flip(0), cap)])
    assert counts == {"images": 10, "texts": 30} and scorer.pairs_scored == 50
    teacher.encode_image, teacher.encode_text = encode_image, encode_text
    with torch.no_grad():
        want = torch.cat([teacher.score(images[img], tokens[cap]), teacher.score(images[img.flip(0)], tokens[cap])])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scorer.probability(img, cap), torch.sigmoid(want[:25]), atol=1e-6, rtol=1e-5)
    assert scorer(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)).shape == (0,)
    assert scorer.cached_fusion == (fusion == "cross")
    if fusion == "single":
        with pytest.raises(ValueError, match="cached fusion needs a fusion='cross' teacher, got fusion='single'"):
            teacher.image_side(images, cached=True)


# ----------------------------------------------------------------------------------------- configs, loading


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (StudentConfig, {"dim": 30, "heads": 4}, r"dim must be divisible by heads, got dim=30, heads=4"),
        (StudentConfig, {"pool": "max"}, r"pool must be one of \['cls', 'mean', 'cells', 'moments'\], got 'max'"),
        (StudentConfig, {"embed_dim": 0}, r"embed_dim must be >= 1, got 0"),
        (StudentConfig, {"image_layers": -1}, r"image_layers must be >= 0, got -1"),
        (StudentConfig, {"init_temperature": 0.0}, r"init_temperature must be > 0.0, got 0.0"),
        (TeacherConfig, {"fusion": "late"}, r"fusion must be one of \['single', 'cross'\], got 'late'"),
        (TeacherConfig, {"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        (TeacherConfig, {"fusion_layers": 0}, r"fusion_layers must be >= 1, got 0"),
        (StemConfig, {"dim": -2}, r"dim must be >= 1, got -2"),
    ],
)
def test_config_errors_name_the_field(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_configs_round_trip_through_dicts():
    assert StudentConfig.from_dict(asdict(SMALL_STUDENT)) == SMALL_STUDENT
    teacher = small_teacher_config("single")
    assert TeacherConfig.from_dict(asdict(teacher)) == teacher
    # a config recorded before max_words existed (the ambiguous-v1 teacher) read MAX_WORDS words
    assert TeacherConfig.from_dict({"dim": 32}) == TeacherConfig(dim=32, max_words=MAX_WORDS)


def test_load_teacher_round_trip(tmp_path, batch):
    torch.manual_seed(0)
    teacher = CrossEncoder(small_teacher_config("single")).eval()
    save_checkpoint(tmp_path / "t", "teacher", teacher.config_dict(), teacher.state_dict())
    loaded = load_teacher(tmp_path / "t")
    assert loaded.config == teacher.config and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded.score(*batch), teacher.score(*batch))


def test_committed_teacher_loads_and_separates_true_from_false_captions(tiny_world):
    from workbench.experiments import teacher_for_world

    teacher = load_teacher(teacher_for_world(tiny_world.config))  # tiny_world is ambiguous-v1: its own teacher
    s = tiny_world.test
    img = s.caption_image[:200]
    with torch.no_grad():
        own = teacher.score(s.images[img], s.tokens[:200])
        other = teacher.score(s.images[img], s.tokens[:200].roll(7, 0))
    truth = s.relevance_pairs(img, torch.arange(200).roll(7, 0)) == 1
    assert torch.isfinite(own).all()
    assert (own > other)[~truth].float().mean() > 0.8  # a trained teacher, not random weights
    assert tokenize(["a red square"]).shape[1] == s.tokens.shape[1]


@pytest.mark.parametrize("cross", [False, True])
def test_attention_is_multihead_attention_and_runs_under_vmap(cross):
    """The matmul attention of Block keeps nn.MultiheadAttention's parameters, initial values (same seed) and math,
    so checkpoints load unchanged; unlike it, it runs under torch.func.vmap over stacked weights."""
    from torch import nn
    from torch.func import functional_call, stack_module_state, vmap

    from workbench.models.layers import Attention, Block

    torch.manual_seed(5)
    reference = nn.MultiheadAttention(32, 4, batch_first=True)
    torch.manual_seed(5)
    ours = Attention(32, 4)
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), reference.state_dict().values(),
                                                  strict=True))
    x, ctx = torch.randn(6, 7, 32), torch.randn(6, 9, 32)
    pad = torch.zeros(6, 9 if cross else 7, dtype=torch.bool)
    pad[:, 5:] = True
    keys = ctx if cross else x
    with torch.no_grad():
        for mode in (True, False):
            reference.train(mode), ours.train(mode)
            want = reference(x, keys, keys, key_padding_mask=pad, need_weights=False)[0]
            got = ours(x, ctx if cross else None, pad=pad)
            assert torch.allclose(got, want, atol=2e-6), (got - want).abs().max()

    blocks = [Block(32, 4, 48, cross=cross) for _ in range(3)]
    params, buffers = stack_module_state(blocks)
    context = ctx if cross else None

    def one(p, b, inp):
        return functional_call(blocks[0], {**p, **b}, (inp,), {"pad": pad[:, :7], "context": context})

    stacked = vmap(one, in_dims=(0, 0, None))(params, buffers, x)
    with torch.no_grad():
        for i, block in enumerate(blocks):
            assert torch.allclose(stacked[i], block(x, pad=pad[:, :7], context=context), atol=1e-5)


def test_a_pairs_teacher_score_does_not_depend_on_the_batch_that_scored_it(tiny_world):
    """Bit for bit: the same pairs scored in another order, other groupings, one at a time, or with another thread
    count give the same scores (fixed-shape fusion chunks), so a store holds one value per pair whoever wrote it."""
    torch.manual_seed(0)
    teacher = CrossEncoder(small_teacher_config("cross")).eval()
    split = tiny_world.train
    scorer = teacher.pair_scorer(split, chunk=64)
    gen = torch.Generator().manual_seed(1)
    img = torch.randint(split.num_images, (300,), generator=gen)
    cap = torch.randint(split.num_captions, (300,), generator=gen)
    want = scorer(img, cap)
    perm = torch.randperm(300, generator=gen)
    assert torch.equal(scorer(img[perm], cap[perm]), want[perm])
    cuts = [0, 1, 7, 64, 65, 190, 300]
    parts = [scorer(img[a:b], cap[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    assert torch.equal(torch.cat(parts), want)
    assert torch.equal(torch.cat([scorer(img[i : i + 1], cap[i : i + 1]) for i in range(20)]), want[:20])
    assert torch.equal(teacher.pair_scorer(split, chunk=64)(img, cap), want)  # a fresh scorer (new encodings)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(scorer(img, cap), want)
    finally:
        torch.set_num_threads(threads)
