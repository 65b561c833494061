"""Training the dual-encoder student with in-batch ITC (multi-positive), optionally with privileged batches.

``privileged=True`` adds one near-miss of every batch caption as an extra image->text negative (the student's
upper-bound control: can it represent binding at all when the right negatives are in front of it?). It is also
the NegCLIP-style baseline: caption perturbations given to the student directly, without a teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from workbench.checks import check_choice, check_float, check_int
from workbench.data.nearmiss import NearMisses
from workbench.data.world import Split
from workbench.models.student import DualEncoder
from workbench.training.batches import near_miss_columns, sample_pairs
from workbench.training.common import make_optimizer, multi_positive_itc, seed_everything


@dataclass(frozen=True)
class StudentTrainConfig:
    """ITC training of the student."""

    steps: int = 2000
    batch: int = 128
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    positives: str = "semantic"  # "semantic": every caption true for the image; "coco": its own captions only
    privileged: bool = False  # add each caption's near-miss as an extra i2t negative
    eval_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("steps", self.steps, min_value=1)
        check_int("batch", self.batch, min_value=2)
        check_float("lr", self.lr, min_value=0.0, strict_min=True)
        check_int("warmup", self.warmup, min_value=0)
        check_choice("positives", self.positives, ["semantic", "coco"])
        check_int("eval_every", self.eval_every, min_value=1)


def itc_step(
    student: DualEncoder, split: Split, img: torch.Tensor, cap: torch.Tensor, cfg: StudentTrainConfig,
    near: NearMisses | None, gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """In-batch ITC for (image, own caption) index pairs [B], with near-miss columns when privileged."""
    relation = split.relations()[cfg.positives]
    positive = relation.block(img, cap)  # [B, B]
    e_img = student.encode_image(split.images[img])
    e_txt = student.encode_text(split.tokens[cap])
    sim = student.logit_scale * e_img @ e_txt.T
    loss = multi_positive_itc(sim, positive)
    if cfg.privileged:
        tokens, truth = near_miss_columns(split, near, img, cap, gen)
        extra = student.logit_scale * e_img @ student.encode_text(tokens).T  # [B, B']
        sim_i2t = torch.cat([sim, extra], 1)
        pos_i2t = torch.cat([positive, truth], 1)
        i2t = (torch.logsumexp(sim_i2t, 1) - torch.logsumexp(sim_i2t.masked_fill(~pos_i2t, float("-inf")), 1)).mean()
        t2i = (torch.logsumexp(sim.T, 1) - torch.logsumexp(sim.T.masked_fill(~positive.T, float("-inf")), 1)).mean()
        loss = 0.5 * (i2t + t2i)
    return {"itc_loss": loss}


def train_student_itc(
    student: DualEncoder, split: Split, cfg: StudentTrainConfig, near: NearMisses | None = None,
    evaluate: Callable[[DualEncoder], dict[str, float]] | None = None,
    callbacks: tuple[Callable[[int, dict], None], ...] = (), progress: Callable | None = None,
) -> list[dict]:
    """Train with ITC; return the history of logged rows. No display code: pass callbacks / a progress wrapper."""
    if cfg.privileged and near is None:
        raise ValueError("privileged=True needs near-miss captions: pass near=build_near_misses(split)")
    gen = seed_everything(cfg.seed)
    opt, sched = make_optimizer(student.parameters(), cfg.lr, cfg.steps, cfg.warmup, cfg.weight_decay)
    history = []
    for step in progress(range(cfg.steps)) if progress else range(cfg.steps):
        student.train()
        img, cap = sample_pairs(split, cfg.batch, gen)
        terms = itc_step(student, split, img, cap, cfg, near, gen)
        opt.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        opt.step()
        sched.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, **{k: v.item() for k, v in terms.items()}, "logit_scale": student.logit_scale.item()}
            if evaluate is not None:
                student.eval()
                row |= evaluate(student)
            history.append(row)
            for cb in callbacks:
                cb(step + 1, row)
    student.eval()
    return history


def config_dict(cfg: StudentTrainConfig) -> dict:
    return asdict(cfg)
