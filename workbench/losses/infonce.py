"""ITC / InfoNCE over a slate, with several positives per query.

Formula (per query i, over its slate; ``P_i`` = valid positives, ``V_i`` = valid entries)::

    l_i = -log( sum_{p in P_i} exp(s[i, p]) / sum_{k in V_i} exp(s[i, k]) )
        = logsumexp_{V_i} s[i, :] - logsumexp_{P_i} s[i, :]

    L = mean_i l_i                         (over all B rows; a row with no positive contributes 0)

Shapes: ``batch.student`` s float [B, L]; ``batch.positive`` bool [B, L]; ``batch.valid`` bool [B, L] or None.
``s`` already carries the student's logit scale (1 / tau), so there is no temperature here. The teacher is unused.

References:
    van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018 (InfoNCE).
    Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP), 2021.
    Li et al., "Align before Fuse" (ALBEF, ITC with momentum distillation), 2021.

Relations:
    With one positive per row and no padding it equals ``torch.nn.functional.cross_entropy(s, target)``.
    It is the first Plackett-Luce step "the positive above everything"; ``cprd`` adds the next steps
    (teacher-ranked hard negatives above the lower-ranked ones), which is why the two coordinate (paper,
    Finding 3). The multi-positive numerator (sum, not mean, of exp) counts captions of the same image as
    one event, as in ALBEF's and BLIP's ITC with image ids.
"""

from __future__ import annotations

import torch

from workbench.losses._common import fill_masked, row_mean, student_scores
from workbench.losses.registry import register_loss
from workbench.scores.batch import ScoreBatch


@register_loss("infonce", needs_teacher=False, entries="valid")
def infonce(batch: ScoreBatch) -> dict[str, torch.Tensor]:
    """ITC (InfoNCE) over the slate, several positives per query allowed; no teacher."""
    s, valid = student_scores(batch), batch.mask
    pos = batch.positive & valid  # bool [B, L]
    lse_all = torch.logsumexp(fill_masked(s, valid), dim=-1)  # [B]
    lse_pos = torch.logsumexp(fill_masked(s, pos), dim=-1)  # [B]
    return {"itc_loss": row_mean(lse_all - lse_pos, pos.any(dim=-1))}
