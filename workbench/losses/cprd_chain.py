"""CPRD as one Plackett-Luce chain with ITC on the same mined slate: the positive first, then the valid hard negatives
in the teacher's order, the other negatives below them all.

The paper's coordination argument (Finding 3) reads ITC as the first Plackett-Luce step ("the positive above
everything") and CPRD as the next steps. As the trainer applies ``itc`` + ``cprd`` they do not share a slate (ITC
in-batch, CPRD on the mined slate without the positive; docs/method.md, section 5). This loss makes the chain
literal, on the mined slate, so the two readings can be compared.

Formula (per query i; ``p`` its positive, ``c_1 .. c_J`` the valid negatives of CPRD's validity rule in teacher
order, ``R_i`` the slate's other negatives; T the temperature)::

    chain    = (p, c_1, ..., c_J)                        then R_i, unordered, below every chain entry
    l_i      = (1 / (J + 1)) sum_{j=0..J} -log( exp(x_j) / (sum_{k>=j} exp(x_k) + sum_{r in R_i} exp(s_ir / T)) ),
               x = s[i, chain] / T                        (normalize="none": the sum instead of the mean)
    L        = mean_i l_i                                 (rows without a positive contribute 0)

Step 0 is InfoNCE of the positive against the whole mined slate (``infonce`` on that slate, as the ``mined_itc``
baseline); steps 1..J are CPRD's. Several positives in one slate enter step 0 together as one event (the
multi-positive numerator of ``infonce``) and leave the later denominators (the trainer's mined slates hold one).

Shapes: s, u float [B, L]; positive, mask bool [B, L]. Teacher scores are data (no gradient).

References:
    Chen, Ma, Zhang et al., "How to Make Cross Encoder a Good Teacher for Efficient Image-Text Retrieval?",
    CVPR 2024 (arXiv 2407.07479), Finding 3 (coordination of the distillation and contrastive losses).
    Xia et al., ICML 2008 (ListMLE / Plackett-Luce likelihood).

Relations:
    With ``normalize="none"`` it equals ``infonce`` + ``cprd(normalize="none")`` on slates where every row holds a
    positive (a row without one contributes 0 here, while ``cprd`` still orders its negatives). It reads the
    positive (``entries="all"``), unlike ``cprd``.
"""

from __future__ import annotations

from typing import Literal

import torch

from workbench.losses._common import fill_masked, row_mean
from workbench.losses.cprd import VALIDITY_RULES, valid_negatives
from workbench.losses.ranking import plackett_luce_nll
from workbench.losses.registry import at_least, one_of, positive, register_loss
from workbench.scores.batch import ScoreBatch


@register_loss(
    "cprd_chain",
    entries="all",
    checks={"validity": one_of(VALIDITY_RULES.keys()), "m": at_least(1), "temperature": positive()},
)
def cprd_chain(
    batch: ScoreBatch,
    *,
    validity: str = "top",
    threshold: float = 0.5,
    m: int = 4,
    temperature: float = 1.0,
    normalize: Literal["none", "steps"] = "steps",
) -> dict[str, torch.Tensor]:
    """ITC and CPRD as one Plackett-Luce chain on the mined slate: positive, valid negatives, the rest below."""
    s, u = batch.student / temperature, batch.require_teacher("cprd_chain").detach()
    pos, neg, mask = batch.positive & batch.mask, batch.negative, batch.mask
    key = torch.where(neg, u, float("-inf"))  # [B, L]
    chosen = valid_negatives(key, neg, validity=validity, threshold=threshold, m=m)
    head = torch.logsumexp(fill_masked(s, mask), dim=-1) - torch.logsumexp(fill_masked(s, pos), dim=-1)  # [B]
    per_row = head + plackett_luce_nll(s, key, chosen, neg & ~chosen)  # [B]: step 0, then CPRD's J steps
    if normalize == "steps":
        per_row = per_row / (1 + chosen.sum(dim=-1))
    return {"distill_loss": row_mean(per_row, pos.any(dim=-1))}
