"""CPRD: Contrastive Partial Ranking Distillation (the paper's method; docs/method.md, sections 4-5).

The student mines its top-K hard negatives per query (elsewhere: a loss never mines); the teacher orders them;
the student learns the teacher's order over the *valid* hard negatives with InfoNCE-shaped steps.

Formula (per query i; its slate's negatives ``mask & ~positive`` sorted by teacher score u descending, ties:
lower slate index first -> c_1 ... c_n; the validity rule picks J <= n)::

    l_i = (1 / J) sum_{j=1..J} -log( exp(s[i, c_j] / T) / sum_{k=j..n} exp(s[i, c_k] / T) )
    L   = mean_i l_i      (over all B rows; rows with J = 0 contribute 0)
    normalize="none":  the plain sum of the J steps instead of their mean (the default until the fair-test issue:
                       it weighs rows by how many valid negatives they have and puts the loss at ~J x ITC's scale)

Validity rules (``VALIDITY_RULES``; the paper leaves the choice open, so it is a parameter):
    "threshold": c_j is valid if u[i, c_j] >= threshold (teacher units: a probability or a logit).
    "top":       the first m.
    "all":       all n (then CPRD is ListMLE over the slate's negatives).
Invalid negatives only appear in denominators: they must rank below every valid one, with no order among
themselves. Add a rule with ``@validity_rule("name")`` on ``fn(key [B, L], negative [B, L], *, <the parameters it
reads, e.g. threshold or m>) -> valid [B, L]``; ``get_loss("cprd", validity="name")`` accepts it from then on.

Shapes: s, u float [B, L]; positive, mask bool [B, L] (False = padding). Vectorised, no loop over rows: one
ordering of the valid negatives (a top-k narrowing then a small stable sort on CPU, a stable sort elsewhere), one
gather, one reversed ``logcumsumexp`` (see ``ranking.plackett_luce_nll``). Teacher scores are data (no gradient).

References:
    Chen, Ma, Zhang et al., "How to Make Cross Encoder a Good Teacher for Efficient Image-Text Retrieval?",
    CVPR 2024 (arXiv 2407.07479).
    Xia et al., ICML 2008 (ListMLE / Plackett-Luce likelihood), which CPRD truncates to the valid prefix.

Relations:
    ``validity="all"`` equals ``listmle``. Each step is an InfoNCE whose positive is the j-th teacher-ranked
    negative; ``infonce`` (ITC) is the step before them all, "the positive above everything", which is why the
    two coordinate (Finding 3). With ``"top"`` or ``"all"`` it depends only on the teacher's order (a strictly
    increasing transform of u changes nothing); ``"threshold"`` also depends on where u crosses the threshold.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import torch

from workbench.losses.ranking import partial_listmle
from workbench.losses.registry import at_least, one_of, positive, register_loss
from workbench.scores.batch import ScoreBatch

ValidityRule = Callable[..., torch.Tensor]
"""``rule(key float [B, L], negative bool [B, L], *, <only the parameters it uses>) -> valid bool [B, L]``.

``key`` is the teacher score on negatives and ``-inf`` elsewhere. Valid negatives are ordered by the teacher;
the invalid ones only appear in denominators (below every valid one, with no order among themselves). A rule
declares the keyword parameters it reads (``threshold``, ``m``, ...); :func:`valid_negatives` passes it those.
"""

VALIDITY_RULES: dict[str, ValidityRule] = {}


def validity_rule(name: str) -> Callable[[ValidityRule], ValidityRule]:
    """Decorator: add a validity rule to ``VALIDITY_RULES`` (replacing one of the same name)."""

    def decorate(fn: ValidityRule) -> ValidityRule:
        VALIDITY_RULES[name] = fn
        return fn

    return decorate


@validity_rule("threshold")
def threshold_rule(key: torch.Tensor, negative: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """Negatives whose teacher score is ``>= threshold`` (``key`` is ``-inf`` off the negatives)."""
    return key >= threshold


@validity_rule("top")
def top_rule(key: torch.Tensor, negative: torch.Tensor, *, m: int) -> torch.Tensor:
    """The teacher's first ``m`` negatives (all if fewer); among tied scores the lower slate index comes first."""
    k = min(m, key.shape[-1])
    if k == 0:
        return negative
    kth = torch.topk(key, k, dim=-1).values[:, -1:]  # [B, 1]: the m-th largest score (-inf if fewer negatives)
    above = negative & (key > kth)
    tied = negative & (key == kth)
    room = k - above.sum(dim=-1, keepdim=True)  # how many tied ones still fit, lowest columns first
    return above | (tied & (tied.cumsum(dim=-1) <= room))


@validity_rule("all")
def all_rule(key: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Every negative of the slate."""
    return negative


def valid_negatives(key: torch.Tensor, negative: torch.Tensor, *, validity: str = "threshold",
                    threshold: float = 0.5, m: int = 4) -> torch.Tensor:
    """bool [B, L]: the negatives CPRD's ``validity`` rule accepts (``key``: teacher scores float [B, L], ``-inf``
    off the negatives; ``negative`` bool [B, L]). The one definition training and the analyses share."""
    if validity not in VALIDITY_RULES:
        raise ValueError(f"validity must be one of {sorted(VALIDITY_RULES)}, got {validity!r}")
    rule = VALIDITY_RULES[validity]
    return rule(key, negative, **rule_parameters(rule, threshold=threshold, m=m)) & negative


def rule_parameters(rule: ValidityRule, **available: Any) -> dict[str, Any]:
    """The subset of ``available`` keyword parameters that ``rule`` declares."""
    wanted = inspect.signature(rule).parameters
    return {k: v for k, v in available.items() if k in wanted}


@register_loss(
    "cprd",
    checks={"validity": one_of(VALIDITY_RULES.keys()), "m": at_least(1), "temperature": positive()},
)
def cprd(
    batch: ScoreBatch,
    *,
    validity: str = "threshold",
    threshold: float = 0.5,
    m: int = 4,
    temperature: float = 1.0,
    normalize: Literal["none", "steps"] = "steps",
) -> dict[str, torch.Tensor]:
    """Contrastive partial ranking distillation: the teacher's order over the valid hard negatives."""
    select = partial(valid_negatives, validity=validity, threshold=threshold, m=m)
    value = partial_listmle(batch, select, temperature=temperature, normalize=normalize, loss="cprd")
    return {"distill_loss": value}
