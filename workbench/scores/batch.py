"""``ScoreBatch``: the slates every loss consumes.

Each of ``B`` queries has a slate of ``L`` candidates (its positives and mined negatives, padded). A loss is a
pure function of a ``ScoreBatch``; it never mines and never calls a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.checks import check_tensor


@dataclass(frozen=True)
class ScoreBatch:
    """Student and teacher scores over per-query slates.

    Attributes:
        student: float [B, L], student logits (cosine x the student's logit scale).
        teacher: float [B, L] teacher scores for the same entries, or ``None`` (losses needing no teacher).
        positive: bool [B, L], True where the entry truly matches the query.
        mask: bool [B, L], True where the entry exists (False = padding). ``None`` at construction means
            all True; after construction it is always a tensor. (Not to be confused with CPRD's *valid*
            negatives: the ones its validity rule lets the teacher order.)

    Raises:
        ValueError: a shape or dtype mismatch, ``B == 0``, tensors on different devices, or NaN/inf in
            ``student`` or ``teacher`` on an existing entry (padding may hold anything).
    """

    student: torch.Tensor
    positive: torch.Tensor
    teacher: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        s = check_tensor("student", self.student, ndim=2, dtype="float")
        if s.shape[0] == 0:
            raise ValueError(f"student must have at least one row (query), got shape {tuple(s.shape)}")
        shape = tuple(s.shape)
        check_tensor("positive", self.positive, shape=shape, dtype="bool")
        if self.teacher is not None:
            check_tensor("teacher", self.teacher, shape=shape, dtype="float")
        if self.mask is not None:
            check_tensor("mask", self.mask, shape=shape, dtype="bool")
        for name in ("positive", "teacher", "mask"):
            other = getattr(self, name)
            if other is not None and other.device != s.device:
                raise ValueError(f"{name} must be on the student's device {s.device}, got {other.device}")
        if self.mask is None:  # frozen: set once, so every loss reads one tensor
            object.__setattr__(self, "mask", torch.ones_like(self.positive))
        _check_finite("student", s, self.mask)
        if self.teacher is not None:
            _check_finite("teacher", self.teacher, self.mask)

    @property
    def negative(self) -> torch.Tensor:
        """bool [B, L]: existing entries that are not positives."""
        return self.mask & ~self.positive

    def require_teacher(self, loss: str) -> torch.Tensor:
        """Return ``teacher`` or raise ``ValueError`` saying that ``loss`` needs one."""
        if self.teacher is None:
            raise ValueError(
                f"loss {loss!r} needs teacher scores: ScoreBatch.teacher must be a float [B, L] tensor, got None"
            )
        return self.teacher


def _check_finite(name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
    bad = ~torch.isfinite(x.detach()) & mask
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} must be finite on existing (unmasked) entries, got {int(bad.sum())} NaN/inf value(s) "
            f"(first: {name}[{row}, {col}] = {x[row, col].item()})"
        )
