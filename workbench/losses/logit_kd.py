"""Logit distillation: match the teacher's scores themselves (KL on softmaxes, MSE, margin-MSE).

Formulas (per query i; ``V_i`` entries of the slate (``mask``: padding left out), positives included;
``P_i`` positives, ``N_i`` negatives = ``mask & ~positive``; s student logits, u teacher scores)::

    kl:          l_i = KL( softmax_{V_i}(u / T_t) || softmax_{V_i}(s / T_s) ),     L = mean_i l_i  (no T^2 factor)
    mse:         L = mean over all present (i, k) of (s[i, k] - u[i, k])^2           (optionally each row of s and
                 of u standardised first: z = (x - mean_{V_i} x) / sqrt(var_{V_i} x + 1e-12))
    margin_mse:  L = mean over all (i, p, n), p in P_i, n in N_i, of ((s_ip - s_in) - (u_ip - u_in))^2

Shapes: s, u float [B, L]; positive, mask bool [B, L]. Rows with no entry (kl) contribute 0 to the
mean over all B rows; mse and margin_mse average over entries / pairs of the whole batch (0 if there are none).
Teacher scores are detached: gradients reach the student only.

References:
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015 (KL with temperature).
    Hofstaetter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
    Distillation", 2020 (margin-MSE from a cross-encoder to a dual-encoder).
    Chen, Ma, Zhang et al., "How to Make Cross Encoder a Good Teacher for Efficient Image-Text Retrieval?",
    CVPR 2024 (Finding 1: these transfer poorly because the cross-encoder's scores are concentrated).

Relations:
    All three depend on the teacher's score *values*, so a non-affine monotone transform of u changes them (the
    rank losses in ``ranking.py`` and ``cprd`` are unchanged). ``kl`` against a teacher that puts all its mass on
    one positive (``T_t -> 0`` with u highest there) is ``infonce``; ``listnet`` is ``kl`` restricted to the
    negatives, plus the teacher's entropy (a constant for the student). ``margin_mse`` only needs the teacher's
    differences, so it ignores a shift of u per row but not a rescaling; ``mse`` with ``standardize=True``
    ignores affine changes of u per row (positive scale) but not non-linear ones.
"""

from __future__ import annotations

import torch

from workbench.losses._common import fill_masked, masked_mean, row_mean, student_scores, teacher_scores
from workbench.losses.registry import positive, register_loss
from workbench.scores.batch import ScoreBatch

STD_EPS = 1e-12
"""Added to each row's variance before ``sqrt`` when standardising (keeps constant rows finite)."""


@register_loss("kl", entries="all", checks={"teacher_temperature": positive(), "student_temperature": positive()})
def kl(
    batch: ScoreBatch, *, teacher_temperature: float = 1.0, student_temperature: float = 1.0
) -> dict[str, torch.Tensor]:
    """KL(softmax(u/T_t) || softmax(s/T_s)) over each row's entries (padding left out), positives included."""
    s, u, mask = student_scores(batch), teacher_scores(batch, "kl"), batch.mask
    log_p = torch.log_softmax(fill_masked(u / teacher_temperature, mask), dim=-1)  # teacher, [B, L]
    log_q = torch.log_softmax(fill_masked(s / student_temperature, mask), dim=-1)  # student, [B, L]
    per_entry = torch.where(mask, log_p.exp() * (log_p - log_q), 0.0)
    return {"distill_loss": row_mean(per_entry.sum(dim=-1), mask.any(dim=-1))}


@register_loss("mse", entries="all")
def mse(batch: ScoreBatch, *, standardize: bool = False) -> dict[str, torch.Tensor]:
    """Mean squared difference between student and teacher scores over the slate (rows optionally z-scored)."""
    s, u, mask = student_scores(batch), teacher_scores(batch, "mse"), batch.mask
    if standardize:
        s, u = standardize_rows(s, mask), standardize_rows(u, mask)
    return {"distill_loss": masked_mean((s - u) ** 2, mask)}


@register_loss("margin_mse", entries="all")
def margin_mse(batch: ScoreBatch) -> dict[str, torch.Tensor]:
    """Squared error between student and teacher margins s_p - s_n over positive-negative pairs."""
    s, u, mask = student_scores(batch), teacher_scores(batch, "margin_mse"), batch.mask
    pairs = (batch.positive & mask)[:, :, None] & batch.negative[:, None, :]  # [B, L(p), L(n)]
    ds = s[:, :, None] - s[:, None, :]  # [B, L, L]: s_p - s_n
    du = u[:, :, None] - u[:, None, :]
    return {"distill_loss": masked_mean((ds - du) ** 2, pairs)}


def standardize_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float [B, L]: each row of ``x`` z-scored over its ``mask`` (present) entries (population variance + ``STD_EPS``).

    Padding becomes 0; a row with one present entry (or constant values) becomes all 0.
    """
    n = mask.sum(dim=-1, keepdim=True).clamp(min=1)  # [B, 1]
    mean = torch.where(mask, x, 0.0).sum(dim=-1, keepdim=True) / n
    dev = torch.where(mask, x - mean, 0.0)
    var = (dev**2).sum(dim=-1, keepdim=True) / n
    return dev / torch.sqrt(var + STD_EPS)
