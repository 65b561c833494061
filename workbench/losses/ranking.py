"""Ranking distillation: learn the teacher's *order* of the slate's negatives, not its score values.

Formulas (per query i; ``N_i`` = the slate's negatives ``mask & ~positive``; s student, u teacher; T temperatures)::

    ranknet:  L = mean over all (i, a, b), a, b in N_i, u_ia > u_ib, of  log(1 + exp(-(s_ia - s_ib) / T))
    listnet:  l_i = - sum_{k in N_i} softmax_{N_i}(u / T_t)_k * log softmax_{N_i}(s / T)_k,    L = mean_i l_i
    listmle:  sort N_i by u descending (ties: lower slate index first) -> c_1 ... c_n;
              l_i = (1 / n) sum_{j=1..n} -log( exp(s[i, c_j] / T) / sum_{k=j..n} exp(s[i, c_k] / T) ),
              L = mean_i l_i        (normalize="none": the sum of the n steps, ~log n! at equal scores)

Shapes: s, u float [B, L]; positive, mask bool [B, L] (False = padding). Means over rows are over all B rows (a
row with no
negatives contributes 0); ranknet averages over all ordered pairs of the batch (0 if there are none; teacher ties
make no pair). Teacher scores are data (no gradient).

The general implementation is ``partial_listmle``: the Plackett-Luce negative log-likelihood of the teacher's
order of a *selected* set of negatives, the unselected ones sitting in every denominator (``plackett_luce_nll``).
``listmle`` selects every negative; ``cprd`` (cprd.py) selects the valid hard negatives of its validity rule.

References:
    Burges et al., "Learning to Rank using Gradient Descent" (RankNet), ICML 2005.
    Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach" (ListNet), ICML 2007.
    Xia et al., "Listwise Approach to Learning to Rank: Theory and Algorithm" (ListMLE), ICML 2008.
    Chen, Ma, Zhang et al., "How to Make Cross Encoder a Good Teacher for Efficient Image-Text Retrieval?",
    CVPR 2024 (Finding 1: ranking distillation is unaffected by the teacher's concentrated score distribution).

Relations:
    ranknet and listmle depend only on the teacher's order, so a strictly increasing transform of u changes
    nothing (listnet depends on u's values through the softmax). ``listmle`` equals ``cprd`` with
    ``validity="all"``. ``listnet`` is ``kl`` restricted to the negatives, plus the teacher's entropy (a constant for
    the student, so the gradients are the same).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from workbench.losses._common import fill_masked, masked_mean, row_mean, student_scores, teacher_scores
from workbench.losses.registry import positive, register_loss
from workbench.scores.batch import ScoreBatch

SelectFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``select(key float [B, L], negative bool [B, L]) -> bool [B, L]``: which negatives to order (the valid ones).

``key`` is the teacher score on negatives and ``-inf`` elsewhere. Selected negatives are ordered by the teacher;
the others only appear in denominators (ranked below every selected one, with no order among themselves).
"""

NARROW_DEVICES = ("cpu",)
"""Device types where ``teacher_order`` reads ``max J`` on the host (free on the CPU, a sync on a GPU)."""

NARROW_BELOW = 0.5
"""There, the selected negatives are ordered by a top-k narrowing to ``k = max J`` columns when
``k < NARROW_BELOW * L`` (cheap for a few valid negatives), else by a full stable sort; both give the same order."""


@register_loss("ranknet", checks={"temperature": positive()})
def ranknet(batch: ScoreBatch, *, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Pairwise logistic loss on every pair of negatives the teacher orders (u_a > u_b)."""
    s, u, neg = student_scores(batch), teacher_scores(batch, "ranknet"), batch.negative
    pairs = neg[:, :, None] & neg[:, None, :] & (u[:, :, None] > u[:, None, :])  # [B, L(a), L(b)]
    margin = (s[:, :, None] - s[:, None, :]) / temperature  # [B, L, L]: (s_a - s_b) / T
    return {"distill_loss": masked_mean(F.softplus(-margin), pairs)}


@register_loss("listnet", checks={"teacher_temperature": positive(), "temperature": positive()})
def listnet(
    batch: ScoreBatch, *, teacher_temperature: float = 1.0, temperature: float = 1.0
) -> dict[str, torch.Tensor]:
    """Cross-entropy between the teacher's and the student's softmax over the negatives."""
    s, u, neg = student_scores(batch), teacher_scores(batch, "listnet"), batch.negative
    p = torch.softmax(fill_masked(u / teacher_temperature, neg), dim=-1)  # [B, L]
    log_q = torch.log_softmax(fill_masked(s / temperature, neg), dim=-1)
    per_entry = torch.where(neg, -p * log_q, 0.0)
    return {"distill_loss": row_mean(per_entry.sum(dim=-1), neg.any(dim=-1))}


@register_loss("listmle", checks={"temperature": positive()})
def listmle(batch: ScoreBatch, *, temperature: float = 1.0,
            normalize: Literal["none", "steps"] = "steps") -> dict[str, torch.Tensor]:
    """Plackett-Luce negative log-likelihood of the teacher's full order of the negatives (mean over its steps)."""
    value = partial_listmle(batch, all_negatives, temperature=temperature, normalize=normalize, loss="listmle")
    return {"distill_loss": value}


def all_negatives(key: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Select every negative (full ListMLE)."""
    return negative


def partial_listmle(
    batch: ScoreBatch, select: SelectFn, *, temperature: float = 1.0, normalize: str = "none", loss: str = "listmle"
) -> torch.Tensor:
    """Scalar: Plackett-Luce NLL of the teacher's order of the selected negatives, mean over all B rows.

    Args:
        batch: the slates.
        select: picks the negatives to order (see ``SelectFn``); the unselected ones stay in the denominators.
        temperature: divides the student's scores.
        normalize: ``"none"`` sums each row's J steps; ``"steps"`` divides the sum by J (rows with J = 0 stay 0).
        loss: the caller's name, for the missing-teacher error.
    """
    # no padding clean-up needed here: every read below sits behind a mask (torch.where or a masked gather)
    s, u, neg = batch.student, batch.require_teacher(loss).detach(), batch.negative
    if temperature != 1.0:
        s = s / temperature
    key = torch.where(neg, u, float("-inf"))  # [B, L]
    chosen = select(key, neg) & neg
    per_row = plackett_luce_nll(s, key, chosen, neg & ~chosen)  # [B]
    if normalize == "steps":
        per_row = per_row / chosen.sum(dim=-1).clamp(min=1)
    return per_row.mean()


def plackett_luce_nll(x: torch.Tensor, u: torch.Tensor, ordered: torch.Tensor, below: torch.Tensor) -> torch.Tensor:
    """float [B]: ``sum_j -log( exp(x[c_j]) / (sum_{k >= j} exp(x[c_k]) + sum_{b in below} exp(x[b])) )``.

    ``c_1 ... c_J`` are the ``ordered`` entries of a row sorted by ``u`` descending (ties: lower column first);
    each step is an InfoNCE whose positive is ``c_j`` and whose negatives are the later ``c_k`` and every
    ``below`` entry (those have no order among themselves).

    Args:
        x: float [B, L] student scores (already divided by any temperature).
        u: float [B, L] teacher scores (read on ``ordered`` entries only).
        ordered: bool [B, L]; below: bool [B, L], disjoint from ``ordered``.

    Numerics: the suffix sums are a reversed ``logcumsumexp`` over the J ordered scores followed by the
    ``below`` scores' ``logsumexp`` (``SuffixSteps``); masked entries are ``-inf`` only behind ``torch.where``,
    so values and gradients stay finite for rows with no ordered or no below entries.
    """
    J = ordered.sum(dim=-1)  # [B]
    order, step = teacher_order(u, ordered, J)  # [B, k]: the first J[b] columns of row b in teacher order
    x_top = torch.where(step, x.gather(-1, order), float("-inf"))  # [B, k]
    rest = torch.logsumexp(torch.where(below, x, float("-inf")), dim=-1, keepdim=True)  # [B, 1], -inf if none
    return SuffixSteps.apply(x_top, rest, step)


class SuffixSteps(torch.autograd.Function):
    """``sum_{j: step_j} (logsumexp(x_j, ..., x_k, rest) - x_j)`` per row, with a hand-written backward.

    Forward: one reversed ``logcumsumexp`` over ``[x, rest]`` (stable). Backward: for a step k,
    ``d/dx_k = sum_{j <= k} exp(x_k - lse_j) - 1 = exp(x_k + logcumsumexp_j(-lse_j)) - 1`` and
    ``d/drest = exp(rest + logsumexp_j(-lse_j))``: one more ``logcumsumexp`` instead of autograd's three.

    Inputs: x float [B, k] (``-inf`` where not a step), rest float [B, 1] (``-inf`` if empty), step bool [B, k]
    (a prefix of each row). Output: float [B]. Differentiable once (no double backward).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, rest: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        lse = torch.cat([x, rest], dim=-1).flip(-1).logcumsumexp(dim=-1).flip(-1)[:, :-1]  # [B, k]
        ctx.save_for_backward(x, rest, lse, step)
        return torch.where(step, lse - x, 0.0).sum(dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, rest, lse, step = ctx.saved_tensors
        log_inv = torch.where(step, -lse, float("-inf")).logcumsumexp(dim=-1)  # [B, k]: log sum_{j<=k} e^-lse_j
        grad = grad[:, None]  # [B, 1]
        grad_x = torch.where(step, torch.exp(x + log_inv) - 1.0, 0.0) * grad
        log_total = log_inv[:, -1:] if log_inv.shape[-1] else torch.full_like(rest, float("-inf"))
        grad_rest = torch.exp(rest + log_total) * grad
        return grad_x, grad_rest, None


def teacher_order(u: torch.Tensor, chosen: torch.Tensor, J: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``chosen`` columns by ``u`` descending (ties: lower column first), then filler.

    Args:
        u: float [B, L] teacher scores (read on ``chosen`` entries only).
        chosen: bool [B, L]; J: long [B], ``chosen.sum(-1)``.

    Returns:
        ``(order long [B, k], step bool [B, k])``: ``step[b, j]`` is ``j < J[b]``; columns past ``J[b]`` are filler.
        On ``NARROW_DEVICES`` (the CPU) ``k = max(J)``, and when that is small the chosen columns are first
        narrowed to ``k`` in column order by a top-k, then stable-sorted by ``u``: much cheaper than sorting all
        L columns. Elsewhere ``k = L`` (no host sync) and the order is one stable sort.
    """
    L = u.shape[-1]
    k = int(J.max()) if u.device.type in NARROW_DEVICES and L > 0 else L
    step = torch.arange(k, device=u.device) < J[:, None]  # [B, k]
    if k >= NARROW_BELOW * L:
        key = torch.where(chosen, u, float("-inf"))
        return torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :k], step
    by_column = torch.topk(chosen * torch.arange(L, 0, -1, device=u.device), k, dim=-1).indices  # lowest first
    key = torch.where(step, u.gather(-1, by_column), float("-inf"))  # [B, k]
    narrowed = torch.sort(key, dim=-1, descending=True, stable=True).indices
    return by_column.gather(-1, narrowed), step
