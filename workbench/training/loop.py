"""The student trainer: one step, evaluation, and the fit loop (callbacks, checkpoints, resume; no display code: live
plots are callbacks attached from a notebook, as in minGPT's trainer).

    result = fit(FitConfig(losses=(LossTerm("itc"), LossTerm("cprd", 1.0, {"validity": "top", "m": 4}))),
                 world, student, teacher_scores=TeacherScores(teacher, world.train, "runs/scores.sqlite", "w0"),
                 out_dir="runs/cprd")

Each step: sample a batch of images with one own caption each, embed both, ITC over the in-batch slates (both
directions, multi-positive), then mine K negatives per query in each direction once (every distillation term reads
the same slates), look up the teacher's scores (store), and apply each registered loss to the ScoreBatch. The
objective is the weighted sum of every term's ``*_loss`` entries; every entry a loss returns is logged
(``<term>.<entry>`` in the history), as open_clip's named loss outputs.

One trainer for both worlds: the student reads its inputs through ``student.encode_images(split, idx, device)`` /
``student.encode_texts(split, idx, device)`` (the built-in :class:`DualEncoder` indexes the split's tensors, the
`transformers` :class:`~workbench.models.hf.HFStudent` loads images and tokenises captions), so ``world`` is
anything with a ``train`` split: the built-in :class:`World` or a Karpathy dataset (``positives="coco"``).

Several processes (``accelerate launch``): ``dist`` (:mod:`workbench.distributed`) gives each rank a
slice of the global batch, gathers embeddings with gradient for ITC and mining, averages gradients, and lets only
the main process write checkpoints. ``cfg.batch`` is the per-rank batch; one process runs exactly as before.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.data.nearmiss import NearMisses, build_near_misses
from workbench.data.world import World
from workbench.device import autocast, pick_device
from workbench.distributed import SINGLE, Dist, current
from workbench.evaluation.embed import embed_split_rows
from workbench.losses import ScoreBatch, get_loss
from workbench.models.student import DualEncoder
from workbench.scores.mining import EmbeddingQueue
from workbench.training.batches import near_miss_columns, sample_batch
from workbench.training.checkpoint import load_trainer_state, recover_checkpoint, save_trainer_state
from workbench.training.common import make_optimizer, needs_teacher, seed_everything, teacher_reason
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
class MiningPools:
    """The mining pools a step reads besides its batch, outside a run (a run's :class:`TrainState` holds its own)."""

    queues: dict[str, EmbeddingQueue] = field(default_factory=dict)  # "i2t" pool = captions, "t2i" pool = images
    gallery: dict[str, torch.Tensor] = field(default_factory=dict)  # snapshot embeddings of the split


@dataclass
class StepContext:
    """What a step needs besides the state: data, losses, teacher, device."""

    world: World  # or any object with a ``train`` split (e.g. a Karpathy dataset)
    cfg: FitConfig
    student: DualEncoder  # or an HFStudent: anything with encode_images / encode_texts / logit_scale
    losses: dict[str, Callable]
    teacher: Callable | None
    near: NearMisses | None
    device: torch.device
    dist: Dist = SINGLE


@dataclass
class BatchView:
    """A step's embeddings: this rank's batch (grad) and the global batch of all ranks (the same tensors in one
    process; gathered with gradient across processes).

    Attributes:
        e_img, e_txt: float [B, E] local embeddings; img, cap: long [B] their split indices (on the device).
        all_img, all_txt: float [G, E] global embeddings (G = B x world_size); all_img_ids, all_cap_ids: long [G].
    """

    e_img: torch.Tensor
    e_txt: torch.Tensor
    img: torch.Tensor
    cap: torch.Tensor
    all_img: torch.Tensor
    all_txt: torch.Tensor
    all_img_ids: torch.Tensor
    all_cap_ids: torch.Tensor


def build_losses(cfg: FitConfig) -> dict[str, Callable]:
    """Registry losses for every term (validated before training starts); ``itc`` -> infonce on in-batch slates."""
    return {t.name: get_loss("infonce" if t.name == ITC else t.name, **t.params) for t in cfg.losses}


def objective(entries: dict[str, torch.Tensor]) -> torch.Tensor:
    """The part of a loss's output that is optimised: the sum of its entries whose names end in ``_loss`` (the
    other entries are diagnostics, logged but not optimised)."""
    return sum(v for k, v in entries.items() if k.endswith("_loss"))


def _both_directions(loss: Callable, i2t: ScoreBatch, t2i: ScoreBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """A loss on both directions' slates: (its objective, mean of i2t and t2i, with grad; every entry it returned,
    mean of the two directions, as floats for the log)."""
    value, pairs = both_directions_lazy(loss, i2t, t2i)
    return value, {k: 0.5 * (a.item() + b.item()) for k, (a, b) in pairs.items()}


def both_directions_lazy(loss: Callable, i2t: ScoreBatch, t2i: ScoreBatch
                         ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """:func:`_both_directions` without reading the entries yet: (objective, ``{entry: (i2t value, t2i value)}``
    as detached float tensors; the logged value is ``0.5 * (i2t + t2i)`` in Python floats)."""
    out_i2t, out_t2i = loss(i2t), loss(t2i)
    pairs = {k: (out_i2t[k].detach().float(), out_t2i[k].detach().float()) for k in out_i2t}
    return 0.5 * (objective(out_i2t) + objective(out_t2i)), pairs


def itc_terms(ctx: StepContext, view: BatchView, img_cpu: torch.Tensor, cap_cpu: torch.Tensor, scale,
              gen, near_misses: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric in-batch ITC (mean of i2t and t2i), with near-miss columns in i2t when configured.

    Rows are this rank's queries, columns the global batch: ``[B, G]`` (``G = B`` in one process).
    Returns the objective and the loss's named entries (see :func:`_both_directions`).
    ``near_misses``: the near-miss columns already drawn from ``gen`` and encoded (embeddings float [B', E], truth
    bool [B, B'], as the batched trainer does for all its members at once); by default drawn and encoded here.
    """
    value, pairs = itc_terms_lazy(ctx, view, img_cpu, cap_cpu, scale, gen, near_misses)
    return value, {k: 0.5 * (a.item() + b.item()) for k, (a, b) in pairs.items()}


def itc_terms_lazy(ctx: StepContext, view: BatchView, img_cpu: torch.Tensor, cap_cpu: torch.Tensor, scale, gen,
                   near_misses: tuple[torch.Tensor, torch.Tensor] | None = None):
    """:func:`itc_terms` with its entries left as tensors (see :func:`both_directions_lazy`)."""
    split, dist = ctx.world.train, ctx.dist
    relation = split.relations()[ctx.cfg.positives]
    positive = relation.block(img_cpu, dist.gather(cap_cpu)).to(view.e_img.device)  # [B, G]
    sim = scale * view.e_img @ view.all_txt.T
    sim_i2t, pos_i2t = sim, positive
    if ctx.cfg.near_misses:
        if near_misses is None:
            tokens, truth = near_miss_columns(split, ctx.near, img_cpu, cap_cpu, gen, ctx.cfg.near_miss_count,
                                              ctx.cfg.near_miss_flip_weight)
            near_misses = (ctx.student.encode_text(tokens.to(view.e_img.device)), truth)
        extra = scale * view.e_img @ near_misses[0].T
        sim_i2t, pos_i2t = torch.cat([sim, extra], 1), torch.cat([positive, near_misses[1].to(view.e_img.device)], 1)
    if dist.enabled:
        sim_t2i = scale * view.e_txt @ view.all_img.T
        pos_t2i = relation.block(dist.gather(img_cpu), cap_cpu).T.to(view.e_img.device)
    else:
        sim_t2i, pos_t2i = sim.T, positive.T
    return both_directions_lazy(ctx.losses[ITC], itc_batch(sim_i2t.float(), pos_i2t),
                                itc_batch(sim_t2i.float(), pos_t2i))


def sides(pools: MiningPools | TrainState, ctx: StepContext, view: BatchView) -> list[Side]:
    """The two directions' query/pool views for the configured mining pool (the batch pool is the global batch;
    ``pools`` holds the queue and gallery pools: a run's :class:`TrainState`, or a :class:`MiningPools`)."""
    out = []
    views = {"i2t": (view.e_img, view.img, view.e_txt, view.cap, view.all_txt, view.all_cap_ids),
             "t2i": (view.e_txt, view.cap, view.e_img, view.img, view.all_img, view.all_img_ids)}
    for direction, (q, q_ids, own, own_ids, pool, pool_ids) in views.items():
        if ctx.cfg.pool == "queue":
            queue_emb, queue_ids = pools.queues[direction].tensors(drop_ids=pool_ids.cpu())
            pool = torch.cat([pool, queue_emb.to(pool.device, pool.dtype)])
            pool_ids = torch.cat([pool_ids, queue_ids.to(pool_ids.device)])
        elif ctx.cfg.pool == "gallery":
            pool = pools.gallery[direction].to(own.device, own.dtype)
            pool_ids = torch.arange(len(pool), device=own.device)
        out.append(Side(q, q_ids, own, own_ids, pool, pool_ids, direction))
    return out


def loss_terms(state: MiningPools | TrainState | None, ctx: StepContext, img: torch.Tensor, cap: torch.Tensor,
               gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The weighted loss terms of one step on the batch ``(img [B], cap [B])`` (no update).

    ITC on the in-batch slates; each distillation term on the mined slates of both directions, averaged.
    ``state`` is read only by the ``queue`` and ``gallery`` mining pools.
    """
    return _step_terms(state, ctx, img, cap, gen)[0]


def _step_terms(state, ctx, img, cap, gen) -> tuple[dict[str, torch.Tensor], dict, BatchView, list[ScoreBatch]]:
    """(weighted objective per term, every named entry of every term as ``"<term>.<entry>"``, the embeddings, the
    distillation slates ``[i2t, t2i]``; empty without a distillation term)."""
    student, cfg, split, dist = ctx.student, ctx.cfg, ctx.world.train, ctx.dist
    with autocast(ctx.device, cfg.amp):
        e_img = student.encode_images(split, img, ctx.device).float()
        e_txt = student.encode_texts(split, cap, ctx.device).float()
    img_d, cap_d = img.to(ctx.device), cap.to(ctx.device)
    view = BatchView(e_img, e_txt, img_d, cap_d, dist.gather(e_img), dist.gather(e_txt), dist.gather(img_d),
                     dist.gather(cap_d))
    scale = student.logit_scale
    terms: dict[str, torch.Tensor] = {}
    named: dict[str, float] = {}
    batches: list[ScoreBatch] = []
    if ITC in ctx.losses:
        weight = next(t.weight for t in cfg.losses if t.name == ITC)
        value, entries = itc_terms(ctx, view, img, cap, scale, gen)
        terms[ITC] = weight * value
        named |= {f"{ITC}.{k}": v for k, v in entries.items()}
    if cfg.distill_terms:
        relation = split.relations()[cfg.positives]
        batches = [distill_batch(s, cfg, relation, scale, ctx.teacher, gen) for s in sides(state, ctx, view)]
        for term in cfg.distill_terms:
            value, entries = _both_directions(ctx.losses[term.name], *batches)
            terms[term.name] = term.weight * value
            named |= {f"{term.name}.{k}": v for k, v in entries.items()}
    return terms, named, view, batches


def batch_terms(*args, **kwargs) -> dict[str, torch.Tensor]:
    """:func:`batch_terms_and_slates` without the slates: the weighted loss terms of a step (same arguments)."""
    return batch_terms_and_slates(*args, **kwargs)[0]


def batch_terms_and_slates(student: DualEncoder, cfg: FitConfig, data: World, img: torch.Tensor, cap: torch.Tensor,
                           gen: torch.Generator, *, teacher_scores: Callable | None = None,
                           pools: MiningPools | None = None, near: NearMisses | None = None
                           ) -> tuple[dict[str, torch.Tensor], list[ScoreBatch]]:
    """The weighted loss terms of a training step on ``(img [B], cap [B])`` without an update (the trainer's own code,
    for analyses) and the distillation slates ``[i2t, t2i]`` (ScoreBatch [B, L], one graph; ``[]`` if none).

    Args:
        student: the model (its train/eval mode is the caller's; the gallery pool leaves it in eval mode).
        cfg: the run's config (terms, weights, mining); ``data``: anything with a ``train`` split.
        gen: the generator mining and near-miss sampling draw from; teacher_scores: when a term reads the teacher.
        pools: the queue / gallery pools to mine from; default: none for the batch pool, and for the gallery pool
            the training split re-embedded by ``student`` now (a queue pool needs a run's pools).
        near: the training split's near-misses when ``cfg.near_misses`` (built here when not given).
    """
    if cfg.near_misses and near is None:
        near = build_near_misses(data.train)
    device = next(student.parameters()).device
    ctx = StepContext(data, cfg, student, build_losses(cfg), teacher_scores if needs_teacher(cfg) else None, near,
                      device)
    if pools is None:
        if cfg.pool == "queue" and cfg.distill_terms:
            raise ValueError("pool='queue' mines from a run's queue of recent batches: pass that run's pools")
        pools = MiningPools()
        if cfg.pool == "gallery" and cfg.distill_terms:
            was_training = student.training
            refresh_gallery(pools, ctx)
            student.train(was_training)
    terms, _, _, batches = _step_terms(pools, ctx, img, cap, gen)
    return terms, batches


def train_step(state: TrainState, ctx: StepContext) -> dict[str, float]:
    """One optimisation step; returns the logged values of every term (weighted) and the total.

    Across processes every rank draws the same global sample of ``batch x world_size`` pairs and trains on its own
    slice; gradients are averaged and the logged values are means over the ranks.
    """
    state.student.train()
    dist = ctx.dist
    img, cap = sample_batch(ctx.world.train, ctx.cfg.batch * dist.world_size, state.generator, ctx.cfg.group_batches)
    img, cap = dist.local(img), dist.local(cap)
    terms, named, view, _ = _step_terms(state, ctx, img, cap, state.generator)
    total = sum(terms.values())
    state.optimizer.zero_grad(set_to_none=True)
    total.backward()
    dist.average_gradients(state.student.parameters())
    state.optimizer.step()
    state.scheduler.step()
    _update_pools(state, ctx, view)
    scale = state.student.logit_scale.item()
    row = {f"{k}_loss": v.item() for k, v in terms.items()} | named | {"loss": total.item(), "logit_scale": scale}
    return dist.mean_values(row)


def _update_pools(state: TrainState, ctx: StepContext, view: BatchView) -> None:
    if ctx.cfg.pool == "queue":
        state.queues["i2t"].push(view.all_txt.detach().cpu(), view.all_cap_ids.cpu())
        state.queues["t2i"].push(view.all_img.detach().cpu(), view.all_img_ids.cpu())


@torch.no_grad()
def refresh_gallery(pools: MiningPools | TrainState, ctx: StepContext, batch: int | None = None) -> None:
    """Re-embed the whole training split with ``ctx.student`` into ``pools.gallery`` (the ``gallery`` pool): i2t pool
    = captions, t2i pool = images. The student is left in eval mode.

    Across processes each rank embeds a slice and the slices are gathered.
    """
    ctx.student.eval()
    img, txt = embed_split_rows(ctx.student, ctx.world.train, ctx.device, dist=ctx.dist, batch=batch,
                                amp=ctx.cfg.amp)
    pools.gallery = {"i2t": txt, "t2i": img}


def init_state(cfg: FitConfig, student: DualEncoder, device: torch.device, dist: Dist = SINGLE) -> TrainState:
    gen = seed_everything(cfg.seed)
    student.to(device)
    dist.broadcast_parameters(student)
    opt, sched = make_optimizer(student.parameters(), cfg.lr, cfg.steps, cfg.warmup, cfg.weight_decay)
    queues = {}
    if cfg.pool == "queue":
        queues = {d: EmbeddingQueue(cfg.queue_size, student.embed_dim) for d in ("i2t", "t2i")}
    return TrainState(student, opt, sched, gen, queues=queues)


def check_world(cfg: FitConfig, world, dist: Dist = SINGLE) -> None:
    """Clear errors for a config the training split cannot serve (protocol, near-misses, global batch)."""
    split = world.train
    protocols = list(split.relations())
    if cfg.positives not in protocols:
        raise ValueError(f"positives={cfg.positives!r} is not a protocol of this dataset; choose one of {protocols}")
    if cfg.near_misses and not hasattr(split, "tokens"):
        raise ValueError("near_misses=True needs the built-in world's generated near-miss captions; "
                         "real datasets have none")
    if dist.enabled and cfg.batch * dist.world_size > split.num_images:
        raise ValueError(f"the global batch batch x processes = {cfg.batch} x {dist.world_size} exceeds the "
                         f"{split.num_images} training images")


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
    dist: Dist | None = None,
) -> TrainState:
    """Train ``student`` per ``cfg``; returns the final state (its ``history`` holds every logged row).

    Args:
        teacher_scores: ``(img [P], cap [P]) -> (logits [P], probs [P])`` on training-split indices; required when
            ``cfg`` has distillation terms (e.g. :class:`~workbench.scores.teacher_scores.TeacherScores`).
        evaluate: called every ``eval_every`` steps and at the end; its dict is merged into the history row.
        out_dir: where checkpoints go (``out_dir/checkpoint``); needed for ``checkpoint_every`` and ``resume``.
        resume: continue from ``out_dir/checkpoint`` if present (same config required; a save that was
            interrupted is completed or undone first).
        callbacks: ``cb(step, row)`` after each logged row (live plots, tables; never inside the step).
        step_callbacks: ``cb(step, row)`` after every step with that step's losses (e.g. a progress-bar postfix).
            Any callback may raise :class:`StopTraining` to end the run early (final row logged, checkpoint saved).
        progress: wraps the step range (e.g. ``lambda r: tqdm(r)``).
        dist: the data-parallel context; default: the initialised process group, if any (else one process).
            Every rank calls ``fit`` with the same arguments; only the main process writes checkpoints.

    With an ``out_dir``, Ctrl-C ends the run after the step in progress: the checkpoint of that step is saved and
    :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised; resume with ``resume=True``.
    """
    dist = current() if dist is None else dist
    losses = build_losses(cfg)
    if needs_teacher(cfg) and teacher_scores is None:
        raise ValueError(f"{teacher_reason(cfg)} need teacher scores: pass teacher_scores=TeacherScores(...)")
    teacher_scores = teacher_scores if needs_teacher(cfg) else None
    check_world(cfg, world, dist)
    device = dist.device if dist.enabled and dist.device is not None else pick_device(cfg.device)
    state = init_state(cfg, student, device, dist)
    near = build_near_misses(world.train) if cfg.near_misses else None
    ctx = StepContext(world, cfg, student, losses, teacher_scores, near, device, dist)
    checkpoint = Path(out_dir) / "checkpoint" if out_dir is not None else None
    if resume and checkpoint is not None:
        _resume(state, cfg, checkpoint, dist)
    with deferred_interrupt(checkpoint is not None) as interrupted:
        _loop(state, ctx, evaluate, callbacks, step_callbacks, progress, checkpoint, interrupted)
    student.eval()
    if checkpoint is not None and dist.is_main:
        save_trainer_state(checkpoint, state, cfg)
    dist.barrier()
    return state


def _resume(state: TrainState, cfg: FitConfig, checkpoint: Path, dist: Dist) -> None:
    """Load ``checkpoint`` into ``state`` if there is one (an interrupted save is completed or undone first)."""
    if dist.is_main:
        recover_checkpoint(checkpoint)
    dist.barrier()
    if checkpoint.is_dir():
        load_trainer_state(checkpoint, state, cfg)


def _loop(state: TrainState, ctx: StepContext, evaluate, callbacks, step_callbacks, progress,
          checkpoint: Path | None, interrupted: threading.Event) -> None:
    """The steps from ``state.step`` to ``cfg.steps``: log, evaluate, checkpoint; stop early on StopTraining, or
    on Ctrl-C (checkpoint saved, :class:`TrainingInterrupted` raised)."""
    cfg, dist = ctx.cfg, ctx.dist
    steps = range(state.step, cfg.steps)
    row: dict[str, Any] | None = None
    try:
        for _ in progress(steps) if progress else steps:
            if _gallery_due(cfg, state):
                refresh_gallery(state, ctx)
            row = train_step(state, ctx)
            state.step += 1
            for cb in step_callbacks:
                cb(state.step, row)
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                _log(state, row, evaluate, callbacks)
            if checkpoint is not None and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 \
                    and dist.is_main:
                save_trainer_state(checkpoint, state, cfg)
            if _any_rank(interrupted.is_set(), dist) and state.step < cfg.steps:
                _stop_interrupted(state, cfg, checkpoint, dist)
    except StopTraining:
        if row is not None and (not state.history or state.history[-1]["step"] != state.step):
            _log(state, row, evaluate, callbacks, stopping=True)


def _any_rank(flag: bool, dist: Dist) -> bool:
    """Whether ``flag`` is set on any rank (one tiny all-reduce per call under several processes)."""
    return dist.mean_values({"flag": float(flag)})["flag"] > 0 if dist.enabled else flag


def _stop_interrupted(state: TrainState, cfg: FitConfig, checkpoint: Path, dist: Dist) -> None:
    state.student.eval()
    if dist.is_main:
        save_trainer_state(checkpoint, state, cfg)
    dist.barrier()
    raise TrainingInterrupted(state.step, checkpoint)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during :func:`fit` with an ``out_dir``: the step in progress completed, the checkpoint of
    that step was saved, then this is raised (a ``KeyboardInterrupt``). ``fit(..., resume=True)`` continues it.

    Attributes:
        step: the last completed step; checkpoint: the checkpoint folder holding it.
    """

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted after step {step}; checkpoint saved in {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


@contextmanager
def deferred_interrupt(enabled: bool = True) -> Iterator[threading.Event]:
    """Within: the first Ctrl-C (SIGINT) only sets the yielded event, which the loop reads between steps (so a
    checkpoint is never cut in half); a second Ctrl-C interrupts at once. Main thread only (elsewhere, and when
    not ``enabled``, the event is never set and Ctrl-C behaves as usual)."""
    flag = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)
    previous = signal.default_int_handler if previous is None else previous

    def handler(signum, frame) -> None:
        flag.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _gallery_due(cfg: FitConfig, state: TrainState) -> bool:
    """Whether to re-embed the training split now (gallery pool with distillation terms only)."""
    return cfg.pool == "gallery" and bool(cfg.distill_terms) and (state.step % cfg.refresh_every == 0
                                                                  or not state.gallery)


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
