"""Training the built-in cross-encoder teacher: ITC + ITM on hard negatives, with a binding curriculum.

Phase 1 ("binding", ``steps_binding``): ITM on each positive pair vs a near-miss of its caption (1:1), which
only a model that binds attributes and relations can separate. Phase 2 ("full", ``steps_full``): ITC on the
unimodal towers + ITM on the ALBEF mix: each positive, an ITC-mined hard caption and a hard image from the batch,
one random caption, one near-miss caption. Every ITM label comes from the world's ground truth (a "negative" that
happens to be true for the image is labelled a match).

A prototype showed binding is learned after a plateau at chance: log minimal-pair accuracy and wait 3-5k steps
before declaring failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from workbench.checks import check_float, check_int
from workbench.data.grammar import PAD
from workbench.data.nearmiss import NearMisses
from workbench.data.world import SemanticRelation, Split
from workbench.device import autocast
from workbench.models.teacher import CrossEncoder
from workbench.training.batches import own_captions
from workbench.training.common import make_optimizer, multi_positive_itc, sample_hard, seed_everything


@dataclass(frozen=True)
class TeacherTrainConfig:
    """How to train the teacher. ``python -m workbench train-teacher --help`` exposes every field."""

    steps_binding: int = 2000  # phase 1: positives vs their near-misses
    steps_full: int = 2000  # phase 2: ITC + full ITM mix
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 200
    weight_itc: float = 1.0
    weight_ground: float = 1.0  # grounding auxiliary loss: each mention's shape word predicts its object's cell
    weight_layout: float = 1.0  # layout auxiliary loss: the word between two mentions predicts their relative place
    # (1.0 since the contrast-chain-v1 teacher: relations learned in the seeds of benchmarks/results/teacher_recipe)
    flip_share: float = 0.3  # share of near-misses that flip the relation (the kind learned last)
    eval_every: int = 250
    seed: int = 1  # the committed teacher's seed (with seed 0 relations were still at chance after 4,000 steps)

    def __post_init__(self) -> None:
        check_int("steps_binding", self.steps_binding, min_value=0)
        check_int("steps_full", self.steps_full, min_value=0)
        check_int("batch", self.batch, min_value=2)
        check_float("lr", self.lr, min_value=0.0, strict_min=True)
        check_int("warmup", self.warmup, min_value=0)
        check_float("weight_itc", self.weight_itc, min_value=0.0)
        check_float("weight_ground", self.weight_ground, min_value=0.0)
        check_float("weight_layout", self.weight_layout, min_value=0.0)
        check_float("flip_share", self.flip_share, min_value=0.0, max_value=1.0)
        check_int("eval_every", self.eval_every, min_value=1)


def balanced_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE with positives and negatives weighted to contribute equally (logits, labels float [P])."""
    pos = labels.sum().clamp(min=1)
    neg = (1 - labels).sum().clamp(min=1)
    weight = torch.where(labels > 0.5, 0.5 / pos, 0.5 / neg)
    return (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weight).sum()


def grounding_loss(model: CrossEncoder, fused: torch.Tensor, split: Split, cap: torch.Tensor) -> torch.Tensor:
    """BCE of each mention's shape-word state predicting the cells of matching objects (own-image pairs only);
    every mention of a chain.

    Args:
        fused: float [B, T, d] fused states of (image, own caption) pairs; cap: long [B] caption indices.
    """
    positions, cells = split.grounding()
    pos, target = positions[cap].to(fused.device), cells[cap].float().to(fused.device)  # [B, K], [B, K, 9]
    has = pos >= 0
    states = fused.gather(1, pos.clamp(min=0)[..., None].expand(-1, -1, fused.shape[-1]))  # [B, K, d]
    bce = F.binary_cross_entropy_with_logits(model.ground_head(states), target, reduction="none").mean(-1)
    return (bce * has).sum() / has.sum().clamp(min=1)


def layout_loss(model: CrossEncoder, fused: torch.Tensor, split: Split, cap: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the word between two consecutive mentions (a relation phrase's last word, or "and")
    predicting where the second mention's object is relative to the first's (own-image pairs; both relations
    of a chain).

    Args:
        fused: float [B, T, d] fused states of (image, own caption) pairs; cap: long [B] caption indices.
    """
    codes, positions = split.layout()
    target, pos = codes[cap].to(fused.device), positions[cap].to(fused.device)  # [B, K-1], -1 = none / ambiguous
    if not (target >= 0).any():
        return fused.sum() * 0.0
    states = fused.gather(1, pos.clamp(min=0)[..., None].expand(-1, -1, fused.shape[-1]))  # [B, K-1, d]
    return F.cross_entropy(model.layout_head(states).flatten(0, 1), target.flatten(), ignore_index=-1)


def auxiliary_terms(model: CrossEncoder, fused: torch.Tensor, split: Split, cap: torch.Tensor,
                    cfg: TeacherTrainConfig) -> dict[str, torch.Tensor]:
    """Grounding and layout terms on the fused states of (image, own caption) pairs (zero weights skip a term)."""
    terms = {}
    if cfg.weight_ground:
        terms["ground_loss"] = cfg.weight_ground * grounding_loss(model, fused, split, cap)
    if cfg.weight_layout:
        terms["layout_loss"] = cfg.weight_layout * layout_loss(model, fused, split, cap)
    return terms


def kind_weights(near: NearMisses, flip_share: float) -> torch.Tensor:
    """float [K]: sampling weights giving flip_relation ``flip_share`` of the mass, the other kinds equal shares."""
    k = len(near.kinds)
    w = torch.full((k,), (1 - flip_share) / max(1, k - 1))
    if "flip_relation" in near.kinds:
        w[near.kinds.index("flip_relation")] = flip_share
    return w


def same_width(*tokens: torch.Tensor) -> list[torch.Tensor]:
    """Token tensors long [*, T_i] padded with [PAD] to their widest T (a split's captions and its near-misses may
    differ by a column; padding is masked, so scores do not change)."""
    width = max(t.shape[-1] for t in tokens)
    return [F.pad(t, (0, width - t.shape[-1]), value=PAD) for t in tokens]


def binding_step(model: CrossEncoder, split: Split, near: NearMisses, img: torch.Tensor, cap: torch.Tensor,
                 gen: torch.Generator, cfg: TeacherTrainConfig) -> dict[str, torch.Tensor]:
    """Phase-1 losses for a batch of (image, own caption) index pairs [B]."""
    dev = _device(model)
    false_tokens, has = near.sample(cap, gen, kind_weights(near, cfg.flip_share))
    tokens = torch.cat(same_width(split.tokens[cap[has]], false_tokens[has])).to(dev)
    with autocast(dev):
        enc_img = model.encode_image(split.images[img[has]].to(dev))
        txt, pad = model.encode_text(tokens)
        fused = model.fuse(enc_img.repeat(2, 1, 1), txt, pad).float()
    n = int(has.sum())
    labels = torch.cat([torch.ones(n), torch.zeros(n)]).to(dev)
    terms = {"itm_loss": balanced_bce(model.itm_from_fused(fused), labels)}
    return terms | auxiliary_terms(model, fused[:n], split, cap[has], cfg)


def full_step(model: CrossEncoder, split: Split, near: NearMisses, img: torch.Tensor, cap: torch.Tensor,
              gen: torch.Generator, cfg: TeacherTrainConfig) -> dict[str, torch.Tensor]:
    """Phase-2 losses (ITC + ITM on the hard-negative mix) for (image, own caption) index pairs [B]."""
    dev, truth = _device(model), SemanticRelation(split)
    positive = truth.block(img, cap)  # [B, B], CPU
    rand_cap = torch.randint(split.num_captions, (len(img),), generator=gen)
    near_tok, has = near.sample(cap, gen, kind_weights(near, cfg.flip_share))
    cap_tok, rand_tok, near_tok = same_width(split.tokens[cap], split.tokens[rand_cap], near_tok[has])
    with autocast(dev):
        enc_img = model.encode_image(split.images[img].to(dev))
        txt, pad = model.encode_text(cap_tok.to(dev))
        sim = (model.itc_logit_scale * model.itc_embed_image(enc_img) @ model.itc_embed_text(txt).T).float()
        hard_cap = sample_hard(sim.cpu(), positive, gen)  # [B] batch positions
        hard_img = sample_hard(sim.T.cpu(), positive.T, gen)
        rand_txt, rand_pad = model.encode_text(rand_tok.to(dev))
        near_txt, near_pad = model.encode_text(near_tok.to(dev))
        hard_d, hard_i, has_d = hard_cap.to(dev), hard_img.to(dev), has.to(dev)
        pairs_img = torch.cat([enc_img, enc_img, enc_img[hard_i], enc_img, enc_img[has_d]])
        pairs_txt = torch.cat([txt, txt[hard_d], txt, rand_txt, near_txt])
        pairs_pad = torch.cat([pad, pad[hard_d], pad, rand_pad, near_pad])
        fused = model.fuse(pairs_img, pairs_txt, pairs_pad).float()
    b = torch.arange(len(img))
    labels = torch.cat([
        torch.ones(len(img)), positive[b, hard_cap].float(), positive[hard_img, b].float(),
        truth.pairs(img, rand_cap).float(), torch.zeros(int(has.sum())),
    ]).to(dev)
    terms = {"itm_loss": balanced_bce(model.itm_from_fused(fused), labels),
             "itc_loss": cfg.weight_itc * multi_positive_itc(sim, positive.to(dev))}
    return terms | auxiliary_terms(model, fused[: len(img)], split, cap, cfg)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


Callback = Callable[[int, dict[str, float]], None]


def train_teacher(model: CrossEncoder, split: Split, near: NearMisses, cfg: TeacherTrainConfig,
                  evaluate: Callable[[CrossEncoder], dict[str, float]] | None = None,
                  callbacks: list[Callback] = (), progress: Callable | None = None) -> list[dict[str, float]]:
    """Run both phases; return the history (one dict per logged step). No display code: use callbacks."""
    gen = seed_everything(cfg.seed)
    total = cfg.steps_binding + cfg.steps_full
    opt, sched = make_optimizer(model.parameters(), cfg.lr, total, warmup=cfg.warmup)
    history: list[dict[str, float]] = []
    steps = progress(range(total)) if progress else range(total)
    for step in steps:
        model.train()
        img = torch.randint(split.num_images, (cfg.batch,), generator=gen)
        cap = own_captions(split, img, gen)
        phase = "binding" if step < cfg.steps_binding else "full"
        if phase == "binding":
            terms = binding_step(model, split, near, img, cap, gen, cfg)
        else:
            terms = full_step(model, split, near, img, cap, gen, cfg)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == total:
            row = {"step": step + 1, "phase": phase, **{k: v.item() for k, v in terms.items()}}
            if evaluate is not None:
                model.eval()
                row |= evaluate(model)
            history.append(row)
            for cb in callbacks:
                cb(step + 1, row)
    model.eval()
    return history


def config_dict(cfg: TeacherTrainConfig) -> dict:
    return asdict(cfg)
