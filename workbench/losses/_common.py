"""Masking helpers shared by the loss families: NaN-free values and gradients on padded, ragged slates.

Padding entries may hold anything (even NaN or inf), so masks are applied with ``torch.where`` (never by
multiplying: ``0 * nan = nan``), and a row with no entries gets zeros instead of ``-inf`` so that no
``-inf - (-inf)`` ever reaches a value or a gradient.
"""

from __future__ import annotations

import torch

from workbench.scores.batch import ScoreBatch


def student_scores(batch: ScoreBatch) -> torch.Tensor:
    """float [B, L]: the student's scores with padding replaced by 0 (so no NaN can reach a gradient)."""
    return torch.where(batch.mask, batch.student, 0.0)


def teacher_scores(batch: ScoreBatch, loss: str) -> torch.Tensor:
    """float [B, L]: the teacher's scores, detached (they are data), padding replaced by 0.

    Raises:
        ValueError: the batch has no teacher scores (naming ``loss``).
    """
    return torch.where(batch.mask, batch.require_teacher(loss).detach(), 0.0)


def fill_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float [B, L]: ``x`` where ``mask``, ``-inf`` elsewhere; rows with no True in ``mask`` become all zeros.

    The result is safe for ``logsumexp``/``log_softmax`` along the last dim: a row with entries ignores the
    ``-inf`` ones, and an empty row yields finite junk the caller discards with ``torch.where``.
    """
    filled = torch.where(mask, x, float("-inf"))
    return torch.where(mask.any(dim=-1, keepdim=True), filled, 0.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scalar: mean of ``values`` over True entries of ``mask`` (any shape); 0 if there are none."""
    total = torch.where(mask, values, 0.0).sum()
    return total / mask.sum().clamp(min=1)


def row_mean(row_values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Scalar: mean over all B rows of ``row_values`` [B], counting rows where ``rows`` [B] is False as 0."""
    return torch.where(rows, row_values, 0.0).mean()
