"""Slate builders shared by the loss tests (this file holds no tests)."""

from __future__ import annotations

import torch

from workbench.losses import ScoreBatch


def random_slates(seed: int, B: int = 6, L: int = 9, *, dtype: torch.dtype = torch.float64) -> dict:
    """Random slates covering the awkward rows, padding filled with NaN (which must never matter).

    Rows: 0 one positive; 1 two positives; 2 positives only (no negatives); 3 all padding; 4 negatives all
    below the 0.5 threshold (no valid hard negatives); 5+ random. Teacher scores are probabilities, distinct.
    """
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, L, generator=g, dtype=dtype) * 3
    u = torch.sigmoid(torch.randn(B, L, generator=g, dtype=dtype) * 2)
    valid = torch.rand(B, L, generator=g) < 0.8
    positive = torch.zeros(B, L, dtype=torch.bool)
    positive[:, 0] = True
    positive[1, 1] = True
    valid[:3, :2] = True
    positive[2] = valid[2]
    valid[3] = False
    u[4] = u[4] * 0.4
    s = s.masked_fill(~valid, float("nan"))
    u = u.masked_fill(~valid, float("nan"))
    return {"student": s, "teacher": u, "positive": positive, "mask": valid}


def make_batch(slates: dict, *, grad: bool = True, teacher_grad: bool = False) -> ScoreBatch:
    """A ``ScoreBatch`` over fresh leaf copies of ``slates`` (``student`` requiring grad if ``grad``)."""
    s = slates["student"].clone().requires_grad_(grad)
    u = slates["teacher"]
    if u is not None:
        u = u.clone().requires_grad_(teacher_grad)
    return ScoreBatch(student=s, teacher=u, positive=slates["positive"].clone(), mask=slates["mask"].clone())


def total(terms: dict) -> torch.Tensor:
    """The sum of a loss's terms (what the trainer minimises)."""
    return sum(terms.values())
