"""The dense teacher: the whole grid scored once, looked up by index; the store's scores to float tolerance."""

from __future__ import annotations

import pytest
import torch

from workbench.experiments import DEFAULT_TEACHER, WORLD_PRESETS, open_workspace
from workbench.models.teacher import load_teacher
from workbench.scores.dense import DenseTeacherScores
from workbench.scores.teacher_scores import TeacherScores


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(DEFAULT_TEACHER)


def test_dense_grid_equals_the_store_scores(teacher, tiny_world):
    """float32 grid: the store-backed scores within 1e-4 (captions are fused trimmed to their length, which sums
    attention in another order); bf16 grid: within bf16 rounding (relative 2**-8); lookups of any pairs."""
    split = tiny_world.val  # 50 images x 250 captions
    store = TeacherScores(teacher, split, None, "test")
    dense = DenseTeacherScores(teacher, split, dtype=torch.float32, chunk=100, image_block=7)
    half = DenseTeacherScores(teacher, split, chunk=300, image_block=16)
    gen = torch.Generator().manual_seed(0)
    img = torch.randint(split.num_images, (2000,), generator=gen)
    cap = torch.randint(split.num_captions, (2000,), generator=gen)
    want_logits, want_probs = store(img, cap)
    logits, probs = dense(img, cap)
    assert dense.info.pairs == 50 * 250 and dense.info.bytes == dense.memory_bytes() == 50 * 250 * 4
    assert torch.allclose(logits, want_logits, atol=1e-4, rtol=0) and torch.allclose(probs, torch.sigmoid(logits))
    got = half(img, cap)[0]
    assert half.grid.dtype == torch.bfloat16 and half.memory_bytes() == 50 * 250 * 2
    assert ((got - want_logits).abs() <= 2**-8 * want_logits.abs() + 1e-4).all()
    again = DenseTeacherScores(teacher, split, dtype=torch.float32, chunk=100, image_block=7)
    assert torch.equal(again(img, cap)[0], logits)  # the same build gives the same grid, bit for bit
    stats = dense.stats
    assert stats.hits == 2000 and stats.misses == 0 and stats.computed_pairs == 50 * 250


def test_the_dense_teacher_is_chosen_on_a_gpu_or_by_flag(monkeypatch):
    ws = open_workspace(WORLD_PRESETS["smoke"], store_path=None)
    monkeypatch.delenv("WORKBENCH_DENSE_TEACHER", raising=False)
    assert ws.uses_dense_teacher("train") == torch.cuda.is_available()
    assert not ws.uses_dense_teacher("val")  # only the training split's grid is kept
    monkeypatch.setenv("WORKBENCH_DENSE_TEACHER", "1")
    assert ws.uses_dense_teacher("train") and isinstance(ws.teacher_scores("train"), DenseTeacherScores)
    ws.dense_teacher = False
    assert not ws.uses_dense_teacher("train")
    monkeypatch.setenv("WORKBENCH_DENSE_TEACHER", "sometimes")
    ws.dense_teacher = None
    with pytest.raises(ValueError, match="WORKBENCH_DENSE_TEACHER"):
        ws.uses_dense_teacher("train")
