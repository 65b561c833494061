"""Pieces shared by every training loop: seeding, optimisers with warm-up + cosine decay, in-batch ITC, whether a
config reads the teacher."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F

from workbench.losses import loss_spec
from workbench.training.config import FitConfig


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch.Generator for batch sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(
    params, lr: float, steps: int, warmup: int = 100, weight_decay: float = 0.01
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with linear warm-up then cosine decay to 5% of ``lr`` over ``steps``."""
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def multi_positive_itc(sim: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Symmetric in-batch ITC with several positives per row/column.

    Args:
        sim: float [B_img, B_txt] logits (scale * cosine).
        positive: bool [B_img, B_txt], True where the caption matches the image (each row and column has >= 1).

    Returns:
        scalar: mean over both directions of ``-log(sum_pos e^s / sum_all e^s)``.
    """
    def one_way(s: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (torch.logsumexp(s, 1) - torch.logsumexp(s.masked_fill(~p, float("-inf")), 1)).mean()

    return 0.5 * (one_way(sim, positive) + one_way(sim.T, positive.T))


def sample_hard(sim: torch.Tensor, positive: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ALBEF-style hard negative per row: sampled with probability softmax(sim) over the row's negatives.

    Args:
        sim: float [R, C]; positive: bool [R, C].
    Returns:
        long [R] column index per row (rows with no negative get a uniformly random column).
    """
    logits = sim.detach().float().masked_fill(positive, float("-inf"))
    none = torch.isinf(logits).all(1)
    logits[none] = 0.0
    return torch.multinomial(F.softmax(logits, dim=1), 1, generator=generator).squeeze(1)


def teacher_reason(cfg: FitConfig) -> str:
    """What in ``cfg`` reads the teacher, in words ("" when nothing does): distillation terms that read teacher
    scores (``infonce`` on mined slates, e.g., does not), and slates that drop the teacher's detected false
    negatives (``drop_teacher_matches``)."""
    names = [t.name for t in cfg.distill_terms if loss_spec(t.name).needs_teacher]
    parts = [f"loss terms {names}"] if names else []
    if cfg.drop_teacher_matches and cfg.distill_terms:
        parts.append("drop_teacher_matches=True (the teacher detects the slates' false negatives)")
    return " and ".join(parts)


def needs_teacher(cfg: FitConfig) -> bool:
    """Whether a run of ``cfg`` reads teacher scores (:func:`teacher_reason` names why)."""
    return bool(teacher_reason(cfg))
