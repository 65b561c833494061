"""Contract tests generated from the registry: every registered loss is checked the same way."""

from __future__ import annotations

import pytest
import torch
from test_losses_support import make_batch, random_slates, total

from workbench.losses import ScoreBatch, get_loss, list_losses, loss_spec

LOSSES = list(list_losses())
NEGATIVES_ONLY = [n for n in LOSSES if loss_spec(n).entries == "negatives"]
SEEDS = [0, 1, 2]


def run(name: str, slates: dict, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, student gradient) of loss ``name`` on ``slates``."""
    batch = make_batch(slates)
    value = total(get_loss(name, **kw)(batch))
    value.backward()
    return value.detach(), batch.student.grad


def permute_columns(slates: dict, perm: torch.Tensor) -> dict:
    return {k: None if v is None else v[:, perm] for k, v in slates.items()}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_returns_named_finite_scalars(name, dtype):
    terms = get_loss(name)(make_batch(random_slates(0, dtype=dtype)))
    assert terms and all(k.endswith("_loss") for k in terms)
    for value in terms.values():
        assert value.ndim == 0 and torch.isfinite(value) and value.dtype == dtype


def test_term_names():
    assert set(get_loss("infonce")(make_batch(random_slates(0)))) == {"itc_loss"}
    for name in set(LOSSES) - {"infonce"}:
        assert set(get_loss(name)(make_batch(random_slates(0)))) == {"distill_loss"}


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_reach_student_only(name):
    batch = make_batch(random_slates(1), teacher_grad=True)
    total(get_loss(name)(batch)).backward()
    g = batch.student.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert batch.teacher.grad is None or not batch.teacher.grad.any()


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("seed", SEEDS)
def test_padding_is_ignored(name, seed):
    slates = random_slates(seed)
    value, grad = run(name, slates)
    pad = ~slates["mask"]
    assert not grad[pad].any()  # NaN in the padding reaches no gradient
    junk = dict(slates, student=slates["student"].masked_fill(pad, 1e6), teacher=slates["teacher"].masked_fill(pad, 7))
    value2, grad2 = run(name, junk)
    torch.testing.assert_close(value2, value)
    torch.testing.assert_close(grad2, grad)


@pytest.mark.parametrize("name", LOSSES)
def test_padding_columns_change_nothing(name):
    slates = random_slates(3)
    B, L = slates["student"].shape
    extra = {
        "student": torch.full((B, 3), float("inf"), dtype=torch.float64),
        "teacher": torch.full((B, 3), float("nan"), dtype=torch.float64),
        "positive": torch.tensor([[True, False, True]]).expand(B, 3),
        "mask": torch.zeros(B, 3, dtype=torch.bool),
    }
    wide = {k: torch.cat([v[:, :4], extra[k], v[:, 4:]], dim=1) for k, v in slates.items()}
    value, grad = run(name, slates)
    value_wide, grad_wide = run(name, wide)
    torch.testing.assert_close(value_wide, value)
    torch.testing.assert_close(torch.cat([grad_wide[:, :4], grad_wide[:, 7:]], dim=1), grad)


@pytest.mark.parametrize("name", NEGATIVES_ONLY)
@pytest.mark.parametrize("seed", SEEDS)
def test_positives_are_never_negatives(name, seed):
    """Losses that read negatives only: scores at positives never matter, and a positive is as good as absent."""
    slates = random_slates(seed)
    value, grad = run(name, slates)
    pos = slates["positive"] & slates["mask"]
    assert not grad[pos].any()
    moved = dict(slates, student=slates["student"].masked_fill(pos, 50.0))
    moved["teacher"] = slates["teacher"].masked_fill(pos, 0.99)
    torch.testing.assert_close(run(name, moved)[0], value)
    # column 4 as a positive in every row == column 4 removed
    as_pos = dict(slates, positive=slates["positive"].clone())
    as_pos["positive"][:, 4] = True
    keep = [c for c in range(slates["student"].shape[1]) if c != 4]
    torch.testing.assert_close(run(name, as_pos)[0], run(name, permute_columns(slates, torch.tensor(keep)))[0])


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("seed", SEEDS)
def test_column_permutation_changes_nothing(name, seed):
    slates = random_slates(seed)
    perm = torch.randperm(slates["student"].shape[1], generator=torch.Generator().manual_seed(seed))
    value, grad = run(name, slates)
    value_p, grad_p = run(name, permute_columns(slates, perm))
    torch.testing.assert_close(value_p, value)
    torch.testing.assert_close(grad_p, grad[:, perm])


@pytest.mark.parametrize("name", LOSSES)
def test_rows_without_negatives_are_finite(name):
    """Only positives, nothing valid at all, or an empty slate: finite values and gradients (0 without negatives)."""
    B, L = 3, 4
    only_pos = {
        "student": torch.randn(B, L, dtype=torch.float64),
        "teacher": torch.rand(B, L, dtype=torch.float64),
        "positive": torch.ones(B, L, dtype=torch.bool),
        "mask": torch.tensor([[True] * 4, [True, True, False, False], [False] * 4]),
    }
    nothing = dict(only_pos, mask=torch.zeros(B, L, dtype=torch.bool))
    empty = {k: v[:, :0] for k, v in only_pos.items()}
    for slates in (only_pos, nothing, empty):
        value, grad = run(name, slates)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        if name in NEGATIVES_ONLY or slates is not only_pos:
            assert value == 0 and not grad.any()


@pytest.mark.parametrize("name", LOSSES)
def test_teacher_requirement(name):
    slates = dict(random_slates(0), teacher=None)
    if loss_spec(name).needs_teacher:
        with pytest.raises(ValueError, match=f"loss '{name}' needs teacher scores"):
            get_loss(name)(make_batch(slates))
        with pytest.raises(ValueError, match="needs teacher scores"):
            loss_spec(name).fn(make_batch(slates))
    else:
        assert torch.isfinite(total(get_loss(name)(make_batch(slates))))


@pytest.mark.parametrize("name", LOSSES)
def test_get_loss_defaults_equal_direct_call(name):
    batch = make_batch(random_slates(2), grad=False)
    direct = loss_spec(name).fn(batch)
    via_registry = get_loss(name)(batch)
    assert direct.keys() == via_registry.keys()
    for key in direct:
        torch.testing.assert_close(direct[key], via_registry[key])


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_is_documented(name):
    doc = loss_spec(name).fn.__module__
    module_doc = __import__(doc, fromlist=["_"]).__doc__
    for section in ("References:", "Relations:", "Shapes:"):
        assert section in module_doc, f"{doc} docstring lacks {section!r}"


def test_batch_must_be_a_scorebatch():
    with pytest.raises(TypeError, match="takes a ScoreBatch, got dict"):
        get_loss("cprd")(random_slates(0))
    assert isinstance(make_batch(random_slates(0)), ScoreBatch)
