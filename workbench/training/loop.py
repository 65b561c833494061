"""The student trainer: one step, evaluation, and the fit loop (callbacks, checkpoints, resume; no display code).

    result = fit(FitConfig(losses=(LossTerm("itc"), LossTerm("cprd", 1.0, {"validity": "top", "m": 4}))),
                 world, student, teacher_scores=TeacherScores(teacher, world.train, "runs/scores.sqlite", "w0"),
                 out_dir="runs/cprd")

Each step: sample a batch of images with one own caption each, embed both, ITC over the in-batch slates (both
directions, multi-positive), then for every distillation term mine K negatives per query in each direction, look
up the teacher's scores (store), and apply the registered loss to the ScoreBatch. The objective is the weighted
sum of every term; each term is logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.data.nearmiss import NearMisses, build_near_misses
from workbench.data.world import World
from workbench.device import autocast, pick_device
from workbench.losses import get_loss, loss_spec
from workbench.models.student import DualEncoder
from workbench.scores.mining import EmbeddingQueue
from workbench.training.batches import near_miss_columns, sample_pairs
from workbench.training.checkpoint import load_trainer_state, save_trainer_state
from workbench.training.common import make_optimizer, seed_everything
from workbench.training.config import ITC, FitConfig
from workbench.training.slates import Side, distill_batch, itc_batch

Callback = Callable[[int, dict[str, Any]], None]


class StopTraining(Exception):  # noqa: N818  (a control-flow signal, like StopIteration)
    """Raise from a callback to end :func:`fit` early (e.g. a notebook's stop button).

    The step in progress completes; ``fit`` then logs a final row at that step (with evaluation) unless one was
    just logged, saves the checkpoint when it has an ``out_dir``, and returns normally.
    """


@dataclass
class TrainState:
    """Everything that changes during training (and is checkpointed)."""

    student: DualEncoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    queues: dict[str, EmbeddingQueue] = field(default_factory=dict)  # "i2t" pool = captions, "t2i" pool = images
    gallery: dict[str, torch.Tensor] = field(default_factory=dict)  # snapshot embeddings of the split


@dataclass
class StepContext:
    """What a step needs besides the state: data, losses, teacher, device."""

    world: World
    cfg: FitConfig
    student: DualEncoder
    losses: dict[str, Callable]
    teacher: Callable | None
    near: NearMisses | None
    device: torch.device


def build_losses(cfg: FitConfig) -> dict[str, Callable]:
    """Registry losses for every term (validated before training starts); ``itc`` -> infonce on in-batch slates."""
    return {t.name: get_loss("infonce" if t.name == ITC else t.name, **t.params) for t in cfg.losses}


def needs_teacher(cfg: FitConfig) -> bool:
    """Whether any distillation term reads teacher scores (``infonce`` on mined slates, e.g., does not)."""
    return any(loss_spec(t.name).needs_teacher for t in cfg.distill_terms)


def itc_terms(ctx: StepContext, e_img, e_txt, img, cap, scale, gen) -> torch.Tensor:
    """Symmetric in-batch ITC (mean of i2t and t2i), with near-miss columns in i2t when configured."""
    split, loss = ctx.world.train, ctx.losses[ITC]
    positive = split.relations()[ctx.cfg.positives].block(img, cap).to(e_img.device)
    sim = scale * e_img @ e_txt.T
    sim_i2t, pos_i2t = sim, positive
    if ctx.cfg.near_misses:
        tokens, truth = near_miss_columns(split, ctx.near, img.cpu(), cap.cpu(), gen)
        extra = scale * e_img @ ctx.student.encode_text(tokens.to(e_img.device)).T
        sim_i2t, pos_i2t = torch.cat([sim, extra], 1), torch.cat([positive, truth.to(e_img.device)], 1)
    i2t = loss(itc_batch(sim_i2t.float(), pos_i2t))
    t2i = loss(itc_batch(sim.T.float(), positive.T))
    return 0.5 * (sum(i2t.values()) + sum(t2i.values()))


def sides(state: TrainState, ctx: StepContext, e_img, e_txt, img, cap) -> list[Side]:
    """The two directions' query/pool views for the configured mining pool."""
    out = []
    views = {"i2t": (e_img, img, e_txt, cap), "t2i": (e_txt, cap, e_img, img)}
    for direction, (q, q_ids, own, own_ids) in views.items():
        pool, pool_ids = own, own_ids
        if ctx.cfg.pool == "queue":
            queue_emb, queue_ids = state.queues[direction].tensors(drop_ids=own_ids.cpu())
            pool = torch.cat([own, queue_emb.to(own.device, own.dtype)])
            pool_ids = torch.cat([own_ids, queue_ids.to(own_ids.device)])
        elif ctx.cfg.pool == "gallery":
            pool = state.gallery[direction].to(own.device, own.dtype)
            pool_ids = torch.arange(len(pool), device=own.device)
        out.append(Side(q, q_ids, own, own_ids, pool, pool_ids, direction))
    return out


def loss_terms(state: TrainState | None, ctx: StepContext, img: torch.Tensor, cap: torch.Tensor,
               gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The weighted loss terms of one step on the batch ``(img [B], cap [B])`` (no update).

    ITC on the in-batch slates; each distillation term on the mined slates of both directions, averaged.
    ``state`` is read only by the ``queue`` and ``gallery`` mining pools.
    """
    return _terms_and_embeddings(state, ctx, img, cap, gen)[0]


def _terms_and_embeddings(state, ctx, img, cap, gen) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    student, cfg, split = ctx.student, ctx.cfg, ctx.world.train
    images, tokens = split.images[img].to(ctx.device, non_blocking=True), split.tokens[cap].to(ctx.device)
    with autocast(ctx.device, cfg.amp):
        e_img, e_txt = student.encode_image(images).float(), student.encode_text(tokens).float()
    scale = student.logit_scale
    terms: dict[str, torch.Tensor] = {}
    if ITC in ctx.losses:
        weight = next(t.weight for t in cfg.losses if t.name == ITC)
        terms[ITC] = weight * itc_terms(ctx, e_img, e_txt, img, cap, scale, gen)
    if cfg.distill_terms:
        relation = split.relations()[cfg.positives]
        batches = [distill_batch(s, cfg, relation, scale, ctx.teacher, gen)
                   for s in sides(state, ctx, e_img, e_txt, img.to(ctx.device), cap.to(ctx.device))]
        for term in cfg.distill_terms:
            values = [sum(ctx.losses[term.name](b).values()) for b in batches]
            terms[term.name] = term.weight * 0.5 * (values[0] + values[1])
    return terms, (e_img.detach(), e_txt.detach())


def train_step(state: TrainState, ctx: StepContext) -> dict[str, float]:
    """One optimisation step; returns the logged values of every term (weighted) and the total."""
    state.student.train()
    img, cap = sample_pairs(ctx.world.train, ctx.cfg.batch, state.generator)
    terms, (e_img, e_txt) = _terms_and_embeddings(state, ctx, img, cap, state.generator)
    total = sum(terms.values())
    state.optimizer.zero_grad(set_to_none=True)
    total.backward()
    state.optimizer.step()
    state.scheduler.step()
    _update_pools(state, ctx, e_img, e_txt, img, cap)
    scale = state.student.logit_scale.item()
    return {f"{k}_loss": v.item() for k, v in terms.items()} | {"loss": total.item(), "logit_scale": scale}


def _update_pools(state: TrainState, ctx: StepContext, e_img, e_txt, img, cap) -> None:
    if ctx.cfg.pool == "queue":
        state.queues["i2t"].push(e_txt.cpu(), cap.cpu())
        state.queues["t2i"].push(e_img.cpu(), img.cpu())


@torch.no_grad()
def refresh_gallery(state: TrainState, ctx: StepContext, batch: int = 1024) -> None:
    """Re-embed the whole training split (the ``gallery`` pool): i2t pool = captions, t2i pool = images."""
    student, split = state.student, ctx.world.train
    student.eval()
    with autocast(ctx.device, ctx.cfg.amp):
        caps = [student.encode_text(t.to(ctx.device)).float() for t in split.tokens.split(batch)]
        imgs = [student.encode_image(x.to(ctx.device)).float() for x in split.images.split(batch)]
    state.gallery = {"i2t": torch.cat(caps), "t2i": torch.cat(imgs)}


def init_state(cfg: FitConfig, student: DualEncoder, device: torch.device) -> TrainState:
    gen = seed_everything(cfg.seed)
    student.to(device)
    opt, sched = make_optimizer(student.parameters(), cfg.lr, cfg.steps, cfg.warmup, cfg.weight_decay)
    queues = {}
    if cfg.pool == "queue":
        dim = student.config.embed_dim
        queues = {d: EmbeddingQueue(cfg.queue_size, dim) for d in ("i2t", "t2i")}
    return TrainState(student, opt, sched, gen, queues=queues)


def fit(
    cfg: FitConfig,
    world: World,
    student: DualEncoder,
    *,
    teacher_scores: Callable | None = None,
    evaluate: Callable[[DualEncoder], dict[str, Any]] | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: tuple[Callback, ...] = (),
    step_callbacks: tuple[Callback, ...] = (),
    progress: Callable | None = None,
) -> TrainState:
    """Train ``student`` per ``cfg``; returns the final state (its ``history`` holds every logged row).

    Args:
        teacher_scores: ``(img [P], cap [P]) -> (logits [P], probs [P])`` on training-split indices; required when
            ``cfg`` has distillation terms (e.g. :class:`~workbench.scores.teacher_scores.TeacherScores`).
        evaluate: called every ``eval_every`` steps and at the end; its dict is merged into the history row.
        out_dir: where checkpoints go (``out_dir/checkpoint``); needed for ``checkpoint_every`` and ``resume``.
        resume: continue from ``out_dir/checkpoint`` if present (same config required).
        callbacks: ``cb(step, row)`` after each logged row (live plots, tables; never inside the step).
        step_callbacks: ``cb(step, row)`` after every step with that step's losses (e.g. a progress-bar postfix).
            Any callback may raise :class:`StopTraining` to end the run early (final row logged, checkpoint saved).
        progress: wraps the step range (e.g. ``lambda r: tqdm(r)``).
    """
    losses = build_losses(cfg)
    if needs_teacher(cfg) and teacher_scores is None:
        names = [t.name for t in cfg.distill_terms if loss_spec(t.name).needs_teacher]
        raise ValueError(f"loss terms {names} need teacher scores: pass teacher_scores=TeacherScores(...)")
    teacher_scores = teacher_scores if needs_teacher(cfg) else None
    device = pick_device(cfg.device)
    state = init_state(cfg, student, device)
    near = build_near_misses(world.train) if cfg.near_misses else None
    ctx = StepContext(world, cfg, student, losses, teacher_scores, near, device)
    if resume and out_dir is not None and (Path(out_dir) / "checkpoint").is_dir():
        load_trainer_state(Path(out_dir) / "checkpoint", state, cfg)
    steps = range(state.step, cfg.steps)
    row: dict[str, Any] | None = None
    try:
        for _ in progress(steps) if progress else steps:
            if cfg.pool == "gallery" and (state.step % cfg.refresh_every == 0 or not state.gallery):
                refresh_gallery(state, ctx)
            row = train_step(state, ctx)
            state.step += 1
            for cb in step_callbacks:
                cb(state.step, row)
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                _log(state, row, evaluate, callbacks)
            if out_dir is not None and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                save_trainer_state(Path(out_dir) / "checkpoint", state, cfg)
    except StopTraining:
        if row is not None and (not state.history or state.history[-1]["step"] != state.step):
            _log(state, row, evaluate, callbacks, stopping=True)
    student.eval()
    if out_dir is not None:
        save_trainer_state(Path(out_dir) / "checkpoint", state, cfg)
    return state


def _log(state: TrainState, row: dict, evaluate, callbacks, stopping: bool = False) -> None:
    row = {"step": state.step, **row}
    if evaluate is not None:
        state.student.eval()
        row |= evaluate(state.student)
    state.history.append(row)
    for cb in callbacks:
        try:
            cb(state.step, row)
        except StopTraining:
            if not stopping:
                raise
