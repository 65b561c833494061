"""Bad input to a ScoreBatch or a loss gives a ValueError naming the tensor, what was expected and what was given."""

from __future__ import annotations

import pytest
import torch

from workbench.losses import ScoreBatch, get_loss


def parts(B: int = 2, L: int = 3) -> dict:
    return {
        "student": torch.zeros(B, L),
        "teacher": torch.zeros(B, L),
        "positive": torch.zeros(B, L, dtype=torch.bool),
        "mask": torch.ones(B, L, dtype=torch.bool),
    }


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"teacher": torch.zeros(2, 4)}, r"teacher must have shape \(2, 3\), got \(2, 4\) \(dimension 1 differs\)"),
        ({"positive": torch.zeros(3, 3, dtype=torch.bool)}, r"positive must have shape \(2, 3\), got \(3, 3\)"),
        ({"mask": torch.ones(2, 3, 1, dtype=torch.bool)}, r"mask must have 2 dimensions, got shape \(2, 3, 1\)"),
        ({"student": torch.zeros(6)}, r"student must have 2 dimensions, got shape \(6,\)"),
        ({"positive": torch.zeros(2, 3)}, "positive must have dtype bool, got torch.float32"),
        ({"mask": torch.ones(2, 3, dtype=torch.int64)}, "mask must have dtype bool, got torch.int64"),
        ({"student": torch.zeros(2, 3, dtype=torch.int64)}, "student must have dtype float, got torch.int64"),
        ({"teacher": torch.zeros(2, 3, dtype=torch.bool)}, "teacher must have dtype float, got torch.bool"),
        ({"student": torch.tensor([[0.0, float("nan"), 0.0], [0.0] * 3])},
         r"student must be finite on existing \(unmasked\) entries, "
         r"got 1 NaN/inf value\(s\) \(first: student\[0, 1\] = nan\)"),
        ({"teacher": torch.tensor([[0.0] * 3, [0.0, 0.0, float("inf")]])},
         r"teacher must be finite .* \(first: teacher\[1, 2\] = inf\)"),
        ({"student": torch.zeros(0, 3), "teacher": None, "positive": torch.zeros(0, 3, dtype=torch.bool),
          "mask": None}, r"student must have at least one row \(query\), got shape \(0, 3\)"),
        ({"positive": torch.zeros(2, 3, dtype=torch.bool, device="meta")},
         "positive must be on the student's device cpu, got meta"),
    ],
)
def test_bad_batches_raise(change, pattern):
    with pytest.raises(ValueError, match=pattern):
        ScoreBatch(**{**parts(), **change})


def test_non_tensors_raise_type_errors():
    with pytest.raises(TypeError, match="student must be a torch.Tensor, got list"):
        ScoreBatch(**{**parts(), "student": [[0.0] * 3] * 2})


def test_nan_in_padding_is_allowed():
    s = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 2.0, float("-inf")]])
    valid = torch.tensor([[True, False, True], [True, True, False]])
    batch = ScoreBatch(**{**parts(), "student": s, "teacher": s.clone(), "mask": valid})
    assert torch.isfinite(get_loss("cprd", validity="all")(batch)["distill_loss"])


def test_missing_teacher_names_the_loss():
    batch = ScoreBatch(**{**parts(), "teacher": None})
    with pytest.raises(ValueError, match="loss 'kl' needs teacher scores: ScoreBatch.teacher must be a float"):
        get_loss("kl")(batch)
