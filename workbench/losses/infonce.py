"""ITC / InfoNCE over a slate, with several positives per query.

Formula (per query i, over its slate; ``P_i`` = its positives, ``V_i`` = its entries (``mask``, padding left out))::

    l_i = -log( sum_{p in P_i} exp(s[i, p]) / sum_{k in V_i} exp(s[i, k]) )
        = logsumexp_{V_i} s[i, :] - logsumexp_{P_i} s[i, :]

    L = mean_i l_i                         (over all B rows; a row with no positive contributes 0)

Shapes: ``batch.student`` s float [B, L]; ``batch.positive`` bool [B, L]; ``batch.mask`` bool [B, L] (False = padding).
``s`` already carries the student's logit scale (1 / tau), so there is no temperature here. The teacher is unused.

References:
    van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018 (InfoNCE).
    Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP), 2021.
    Li et al., "Align before Fuse" (ALBEF, ITC with momentum distillation), 2021.

Relations:
    With one positive per row and no padding it equals ``torch.nn.functional.cross_entropy(s, target)``.
    On one slate it is the first Plackett-Luce step "the positive above everything", and ``cprd`` the next steps
    (teacher-ranked hard negatives above the lower-ranked ones): the paper's coordination argument (Finding 3).
    As trained here the two do not share a slate (ITC in-batch, CPRD on the mined slates without the positive),
    so the chain is an analogy; docs/method.md, section 5. The multi-positive numerator (log of a sum of exp)
    counts captions of the same image as one event; ALBEF and BLIP instead average ``-log softmax`` over the
    positives (soft targets), which differs whenever a row has several positives.
"""

from __future__ import annotations

import torch

from workbench.losses._common import fill_masked, row_mean, student_scores
from workbench.losses.registry import register_loss
from workbench.scores.batch import ScoreBatch


@register_loss("infonce", needs_teacher=False, entries="all")
def infonce(batch: ScoreBatch) -> dict[str, torch.Tensor]:
    """ITC (InfoNCE) over the slate, several positives per query allowed; no teacher."""
    s, mask = student_scores(batch), batch.mask
    pos = batch.positive & mask  # bool [B, L]
    lse_all = torch.logsumexp(fill_masked(s, mask), dim=-1)  # [B]
    lse_pos = torch.logsumexp(fill_masked(s, pos), dim=-1)  # [B]
    return {"itc_loss": row_mean(lse_all - lse_pos, pos.any(dim=-1))}
