"""Many students of one architecture trained at once, as one batched model (``torch.func``).

    members = [Member(cfg_a, student_a, teacher_scores=scores), Member(cfg_b, student_b, teacher_scores=scores)]
    states = fit_batched(members, world)          # one TrainState per member, as fit returns

Each member is a run of its own: its config (seed, loss terms and weights, λ, K, validity rule, teacher view,
negatives, mining pool, near-misses), its own batch sampling (a ``torch.Generator`` seeded as :func:`fit` seeds it),
its own mining, slates, losses, history, evaluation, checkpoint. What is shared is the arithmetic that is the same
for all of them:

- **the encoders**: the members' weights are stacked (``[M, ...]`` per parameter, frozen parameters that are equal
  in every member kept once) and one ``torch.vmap`` of ``torch.func.functional_call`` embeds every member's batch at
  once (one batched matmul per layer instead of M small ones). Nothing here knows the student's architecture: any
  module whose ``encode_images(split, idx, device)`` / ``encode_texts(split, idx, device)`` / ``logit_scale`` (and
  ``encode_text(tokens)`` for near-misses) run under ``vmap`` trains batched;
- **the optimiser**: one AdamW over the stacked parameters. AdamW is elementwise, so with the same learning-rate
  schedule it is exactly per-member AdamW; members must therefore share ``steps``, ``lr``, ``warmup``,
  ``weight_decay`` (and ``batch``, ``device``, ``amp``): :data:`GROUP_FIELDS`;
- **the teacher**: every member's slate pairs of a step go to the teacher in one call (the store scores each
  distinct pair once) and the scores are scattered back.

The loss terms, mining and slates are the single-run trainer's own functions, called per member (a Python loop over
members: they are cheap next to the encoders). A member whose loss or gradients stop being finite stops alone: its
weights stay at the last finite step, it is reported in :attr:`BatchedState.diverged`, and the others continue.

Equivalence with :func:`~workbench.training.loop.fit`: same initial weights, same batches, same mined negatives,
same losses. The batched matmuls of ``vmap`` may round differently from a single model's in the last bit of float32,
so a member equals the same config trained alone within float tolerance (tests/test_batched.py states it), not bit
for bit; the difference can grow over many steps as it does between two machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.data.nearmiss import build_near_misses
from workbench.device import autocast, pick_device
from workbench.evaluation.embed import embed_split_rows
from workbench.scores.mining import EmbeddingQueue
from workbench.training.batches import near_miss_columns, sample_batch
from workbench.training.checkpoint import save_trainer_state
from workbench.training.common import make_optimizer, needs_teacher, seed_everything, teacher_reason
from workbench.training.config import ITC, FitConfig
from workbench.training.loop import (
    BatchView,
    Callback,
    StepContext,
    StopTraining,
    TrainState,
    _gallery_due,
    both_directions_lazy,
    build_losses,
    check_world,
    itc_terms_lazy,
    sides,
)
from workbench.training.slates import distill_slate, teacher_pairs, with_teacher
from workbench.training.stacked import MemberView, StackedStudents, member_optimizer_state

GROUP_FIELDS = ("steps", "batch", "lr", "warmup", "weight_decay", "device", "amp")
"""FitConfig fields every member of one batched run shares (one optimiser and schedule, one stacked batch)."""

BatchCallback = Callable[[int, list[dict[str, Any] | None]], None]
"""``cb(step, rows)`` after every batched step: each member's logged values (None for a stopped member)."""


@dataclass
class Member:
    """One run inside a batched run.

    Attributes:
        cfg: its config (fields in :data:`GROUP_FIELDS` must equal the other members').
        student: its freshly initialised student (seed it as a single run would); trained in place, as ``fit``.
        teacher_scores: ``(img [P], cap [P]) -> (logits [P], probs [P])`` when a term reads the teacher. Members
            with the same object share its calls (one call per step for all of them).
        evaluate: called on the student at each logged step (``eval_every``, the last step); merged into the row.
        out_dir: where its checkpoint goes (``out_dir/checkpoint``, as ``fit`` writes it).
        callbacks: ``cb(step, row)`` after each of its logged rows (e.g. a gradient-coordination probe).
        name: how logs and errors name it.
    """

    cfg: FitConfig
    student: nn.Module
    teacher_scores: Callable | None = None
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None
    out_dir: str | Path | None = None
    callbacks: tuple[Callback, ...] = ()
    name: str = ""


@dataclass
class BatchedState:
    """The members' states (``states[i]``: a :class:`TrainState` as ``fit`` returns, with per-member optimiser and
    scheduler state sliced out of the stacked ones) and the members that diverged: ``{index: {"step", "reason"}}``."""

    states: list[TrainState]
    diverged: dict[int, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def check_members(members: Sequence[Member]) -> None:
    """Clear errors for members that cannot train as one batched run (naming the field and the values)."""
    if not members:
        raise ValueError("a batched run needs at least one member, got none")
    for name in GROUP_FIELDS:
        values = sorted({repr(getattr(m.cfg, name)) for m in members})
        if len(values) > 1:
            raise ValueError(f"members of one batched run must share {name!r} (one optimiser, schedule and stacked "
                             f"batch); got {', '.join(values)}: train them in separate batches")
    shapes = {n: tuple(p.shape) for n, p in members[0].student.named_parameters()}
    for i, m in enumerate(members[1:], 1):
        other = {n: tuple(p.shape) for n, p in m.student.named_parameters()}
        if other != shapes:
            raise ValueError(f"members of one batched run must share the student architecture: member {i} "
                             f"({m.name or m.cfg.seed}) has other parameters than member 0")
    for m in members:
        if needs_teacher(m.cfg) and m.teacher_scores is None:
            raise ValueError(f"member {m.name!r}: {teacher_reason(m.cfg)} need teacher scores: pass teacher_scores")


@dataclass
class _Run:
    """One member's mutable state during a batched run."""

    member: Member
    ctx: StepContext
    generator: torch.Generator
    history: list[dict[str, Any]] = field(default_factory=list)
    queues: dict[str, EmbeddingQueue] = field(default_factory=dict)
    gallery: dict[str, torch.Tensor] = field(default_factory=dict)
    stopped: dict[str, Any] | None = None  # why and when it stopped (diverged)
    frozen: dict[str, torch.Tensor] | None = None  # its weights when it stopped (restored after each update)

    @property
    def cfg(self) -> FitConfig:
        return self.member.cfg


def fit_batched(members: Sequence[Member], world, *, step_callbacks: tuple[BatchCallback, ...] = (),
                progress: Callable | None = None, log: Callable[[str], None] | None = None) -> BatchedState:
    """Train every member as one batched model; returns each member's :class:`TrainState` (see the module doc).

    Args:
        members: the runs (see :class:`Member`; :func:`check_members` says what they must share).
        world: anything with a ``train`` split (the built-in world).
        step_callbacks: ``cb(step, rows)`` after every step (progress bars); may raise :class:`StopTraining` to end
            every member at this step (final rows logged and evaluated, checkpoints saved).
        progress: wraps the step range (e.g. ``lambda r: tqdm(r)``).
        log: receives a line when a member diverges.
    """
    check_members(members)
    cfg0 = members[0].cfg
    device = pick_device(cfg0.device)
    for m in members:
        check_world(m.cfg, world)
    near = build_near_misses(world.train) if any(m.cfg.near_misses for m in members) else None
    runs = []
    for m in members:
        gen = seed_everything(m.cfg.seed)
        m.student.to(device)
        queues = ({d: EmbeddingQueue(m.cfg.queue_size, m.student.embed_dim) for d in ("i2t", "t2i")}
                  if m.cfg.pool == "queue" else {})
        teacher = m.teacher_scores if needs_teacher(m.cfg) else None
        ctx = StepContext(world, m.cfg, m.student, build_losses(m.cfg), teacher, near, device)
        runs.append(_Run(m, ctx, gen, queues=queues))
    stack = StackedStudents([m.student for m in members], device)
    opt, sched = make_optimizer([stack.params[k] for k in stack.trainable], cfg0.lr, cfg0.steps, cfg0.warmup,
                                cfg0.weight_decay)
    start = time.time()
    step = 0
    rows: list[dict[str, Any] | None] = [None] * len(runs)
    try:
        for _ in progress(range(cfg0.steps)) if progress else range(cfg0.steps):
            _refresh_galleries(stack, runs, world, device, step)
            rows = _step(stack, runs, opt, world, device, step, log)
            sched.step()
            step += 1
            for cb in step_callbacks:
                cb(step, rows)
            for i, run in enumerate(runs):
                if rows[i] is not None and (step % run.cfg.eval_every == 0 or step == run.cfg.steps):
                    _log(stack, i, run, step, rows[i])
                if run.member.out_dir is not None and run.cfg.checkpoint_every and step % run.cfg.checkpoint_every == 0:
                    _save(stack, opt, sched, i, run, step)
            if all(run.stopped for run in runs):
                break
    except StopTraining:
        for i, run in enumerate(runs):
            if rows[i] is not None and (not run.history or run.history[-1]["step"] != step):
                _log(stack, i, run, step, rows[i], stopping=True)
    states = []
    for i, run in enumerate(runs):
        stack.copy_to(i, run.member.student)
        if run.frozen is not None:
            _restore_module(run)
        run.member.student.eval()
        state = _export(stack, opt, sched, i, run, step)
        if run.member.out_dir is not None:
            save_trainer_state(Path(run.member.out_dir) / "checkpoint", state, run.cfg)
        states.append(state)
    diverged = {i: run.stopped for i, run in enumerate(runs) if run.stopped}
    return BatchedState(states, diverged, time.time() - start)


# --------------------------------------------------------------------------------------------------- one step


def _step(stack: StackedStudents, runs: list[_Run], opt, world, device, step: int, log) -> list[dict | None]:
    """One optimisation step of every member; returns each member's logged row (None once it has stopped)."""
    split = world.train
    cfg0 = runs[0].cfg
    batch = []
    for run in runs:  # the generator's draws in fit's order: the batch, then near-misses, then (easy) mining
        img, cap = sample_batch(split, run.cfg.batch, run.generator, run.cfg.group_batches)
        nm = (near_miss_columns(split, run.ctx.near, img, cap, run.generator, run.cfg.near_miss_count,
                                run.cfg.near_miss_flip_weight) if run.cfg.near_misses else None)
        batch.append((img, cap, nm))
    img_all = torch.stack([b[0] for b in batch])
    cap_all = torch.stack([b[1] for b in batch])
    stack.template.train()
    with autocast(device, cfg0.amp):
        e_img = stack.call("encode_images", split, img_all, device, in_dims=(None, 0, None)).float()
        e_txt = stack.call("encode_texts", split, cap_all, device, in_dims=(None, 0, None)).float()
    scale = stack.call("logit_scale")  # [M]
    near_emb = _near_miss_embeddings(stack, batch, device, e_txt.shape[-1])
    active = [i for i, run in enumerate(runs) if run.stopped is None]
    terms: dict[int, dict[str, torch.Tensor]] = {}
    named: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    pending: dict[int, list] = {}
    for i in active:
        run = runs[i]
        ctx, cfg = run.ctx, run.cfg
        img, cap, nm = batch[i]
        img_d, cap_d = img.to(device), cap.to(device)
        view = BatchView(e_img[i], e_txt[i], img_d, cap_d, e_img[i], e_txt[i], img_d, cap_d)
        terms[i], named[i] = {}, {}
        try:
            if ITC in ctx.losses:
                weight = next(t.weight for t in cfg.losses if t.name == ITC)
                extra = (near_emb[i], nm[1]) if nm is not None else None
                value, entries = itc_terms_lazy(ctx, view, img, cap, scale[i], run.generator, extra)
                terms[i][ITC] = weight * value
                named[i] |= {f"{ITC}.{k}": v for k, v in entries.items()}
            if cfg.distill_terms:
                relation = split.relations()[cfg.positives]
                pending[i] = [(*distill_slate(s, cfg, relation, scale[i], run.generator), s)
                              for s in sides(run, ctx, view)]
        except ValueError as err:  # non-finite scores (ScoreBatch refuses them): this member diverged
            _diverged(stack, run, i, step, err, log)
    _score_union(runs, pending)
    totals: dict[int, torch.Tensor] = {}
    for i in active:
        run = runs[i]
        if run.stopped:
            continue
        try:
            if i in pending:
                batches = [b for b, _, _ in pending[i]]
                for term in run.cfg.distill_terms:
                    value, entries = both_directions_lazy(run.ctx.losses[term.name], *batches)
                    terms[i][term.name] = term.weight * value
                    named[i] |= {f"{term.name}.{k}": v for k, v in entries.items()}
        except ValueError as err:
            _diverged(stack, run, i, step, err, log)
            continue
        totals[i] = sum(terms[i].values())
    live = [i for i in totals]
    opt.zero_grad(set_to_none=True)
    if live:
        torch.stack([totals[i] for i in live]).sum().backward()
    finite = _finite_members(stack, totals, live)
    for i, ok in zip(live, finite, strict=True):
        if not ok:
            _stop(stack, runs[i], i, step, ValueError("the loss or its gradients are not finite"), log)
    stopped = torch.tensor([runs[i].stopped is not None for i in range(len(runs))], device=device)
    if stopped.any():
        for key in stack.trainable:
            grad = stack.params[key].grad
            if grad is not None:
                grad[stopped] = 0.0
    opt.step()
    _restore_stopped(stack, runs)
    for i, run in enumerate(runs):
        if run.stopped is None and run.cfg.pool == "queue":
            run.queues["i2t"].push(e_txt[i].detach().cpu(), batch[i][1])
            run.queues["t2i"].push(e_img[i].detach().cpu(), batch[i][0])
    return _rows(stack, runs, terms, named, totals)


def _near_miss_embeddings(stack: StackedStudents, batch: list, device, dim: int) -> list[torch.Tensor | None]:
    """Each member's near-miss columns embedded (one vmap over the members, padded to the longest)."""
    drawn = [b[2] for b in batch]
    if all(d is None for d in drawn):
        return [None] * len(batch)
    width = max(len(d[0]) for d in drawn if d is not None)
    if width == 0:
        return [torch.zeros(0, dim, device=device) if d is not None else None for d in drawn]
    template = next(d[0] for d in drawn if d is not None and len(d[0]))
    tokens = []
    for d in drawn:
        t = d[0] if d is not None and len(d[0]) else template[:0]
        tokens.append(torch.cat([t, template[:1].expand(width - len(t), -1)]))
    emb = stack.call("encode_text", torch.stack(tokens).to(device), in_dims=(0,))  # as fit: outside autocast
    return [emb[i, : len(d[0])] if d is not None else None for i, d in enumerate(drawn)]


def _score_union(runs: list[_Run], pending: dict[int, list]) -> None:
    """Every member's slate pairs scored by its teacher, one call per distinct teacher, then scattered back."""
    asks: dict[int, list] = {}
    for i, slates in pending.items():
        teacher = runs[i].ctx.teacher
        if teacher is None or runs[i].stopped:
            continue
        for k, (_, ids, side) in enumerate(slates):
            asks.setdefault(id(teacher), []).append((i, k, teacher_pairs(side, ids), ids.shape))
    for items in asks.values():
        teacher = runs[items[0][0]].ctx.teacher
        img = torch.cat([pairs[0] for _, _, pairs, _ in items])
        cap = torch.cat([pairs[1] for _, _, pairs, _ in items])
        logits, probs = teacher(img, cap)
        start = 0
        for i, k, _, shape in items:
            n = shape[0] * shape[1]
            batch, ids, side = pending[i][k]
            scored = with_teacher(batch, logits[start : start + n].reshape(shape),
                                  probs[start : start + n].reshape(shape), runs[i].cfg)
            pending[i][k] = (scored, ids, side)
            start += n


def _finite_members(stack: StackedStudents, totals: dict[int, torch.Tensor], live: list[int]) -> list[bool]:
    """Whether each live member's loss and every gradient of it are finite (one device sync)."""
    if not live:
        return []
    index = torch.tensor(live, device=totals[live[0]].device)
    grads = [g.reshape(g.shape[0], -1) for k in stack.trainable if (g := stack.params[k].grad) is not None]
    ok = torch.isfinite(torch.stack([totals[i].detach() for i in live]))
    if grads:
        ok &= torch.isfinite(torch.cat(grads, 1)[index]).all(1)
    return ok.tolist()


def _diverged(stack: StackedStudents, run: _Run, i: int, step: int, err: ValueError, log) -> None:
    """A member's step raised: non-finite scores stop it (diverged); any other error is a bug, raised."""
    if "finite" not in str(err):
        raise err
    _stop(stack, run, i, step, err, log)


def _stop(stack: StackedStudents, run: _Run, i: int, step: int, err: Exception, log) -> None:
    """Stop member ``i`` at ``step`` (diverged): its weights stay those of its last finite step."""
    if run.stopped is not None:
        return
    run.stopped = {"step": step + 1, "reason": str(err).split("\n")[0]}
    run.frozen = {k: stack.params[k][i].detach().clone() for k in stack.trainable}
    if log is not None:
        log(f"[batched] member {run.member.name or i} diverged at step {step + 1}: {run.stopped['reason']}; "
            "it stops, the others continue")


@torch.no_grad()
def _restore_stopped(stack: StackedStudents, runs: list[_Run]) -> None:
    """Undo the optimiser's update (momentum, weight decay) on stopped members' slices."""
    for i, run in enumerate(runs):
        if run.frozen is not None:
            for key, value in run.frozen.items():
                stack.params[key][i] = value


def _restore_module(run: _Run) -> None:
    own = dict(run.member.student.named_parameters())
    with torch.no_grad():
        for key, value in run.frozen.items():
            own[key.removeprefix("student.")].copy_(value)


def _rows(stack, runs, terms, named, totals) -> list[dict | None]:
    """Each member's logged row, as ``train_step`` logs it (one device sync for every value of every member)."""
    with torch.no_grad():
        scales = stack.call("logit_scale")
    values: list[torch.Tensor] = [scales.detach().float().reshape(-1)]
    layout = []
    for i, run in enumerate(runs):
        if run.stopped is not None or i not in totals:
            layout.append(None)
            continue
        keys = list(terms[i])
        names = list(named[i])
        values += [terms[i][k].detach().float().reshape(1) for k in keys]
        values += [torch.stack(named[i][k]).reshape(2) for k in names]
        values.append(totals[i].detach().float().reshape(1))
        layout.append((keys, names))
    flat = torch.cat([v.to(values[0].device) for v in values]).tolist()
    scale_values, pos = flat[: len(runs)], len(runs)
    rows: list[dict | None] = []
    for i, entry in enumerate(layout):
        if entry is None:
            rows.append(None)
            continue
        keys, names = entry
        row = {f"{k}_loss": flat[pos + j] for j, k in enumerate(keys)}
        pos += len(keys)
        for k in names:
            row[k] = 0.5 * (flat[pos] + flat[pos + 1])
            pos += 2
        row |= {"loss": flat[pos], "logit_scale": scale_values[i]}
        pos += 1
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ pools, logs, export


@torch.no_grad()
def _refresh_galleries(stack: StackedStudents, runs: list[_Run], world, device, step: int) -> None:
    """Re-embed the training split for every member whose gallery pool is due, member by member with the single
    model's arithmetic and ``refresh_gallery``'s code (:func:`embed_split_rows`). A split is large enough that
    batching members gains nothing on a CPU, and this way the gallery is the one the run alone would mine."""
    stack.template.eval()
    for i, run in enumerate(runs):
        if run.stopped is None and _gallery_due(run.cfg, _Due(step, run.gallery)):
            img, txt = embed_split_rows(MemberView(stack, i), world.train, device, amp=run.cfg.amp)
            run.gallery = {"i2t": txt, "t2i": img}
    stack.template.train()


@dataclass
class _Due:
    step: int
    gallery: dict


def _log(stack: StackedStudents, i: int, run: _Run, step: int, row: dict, stopping: bool = False) -> None:
    """Append member ``i``'s row at ``step`` (its weights written into its student first, then evaluated)."""
    student = run.member.student
    stack.copy_to(i, student)
    row = {"step": step, **row}
    if run.member.evaluate is not None:
        student.eval()
        row |= run.member.evaluate(student)
    run.history.append(row)
    for cb in run.member.callbacks:
        try:
            cb(step, row)
        except StopTraining:
            if not stopping:
                raise


def _export(stack: StackedStudents, opt, sched, i: int, run: _Run, step: int) -> TrainState:
    """Member ``i`` as a single run's :class:`TrainState` (its own AdamW and schedule state, sliced): what its
    checkpoint holds, so ``fit(..., resume=True)`` can continue it alone."""
    student = run.member.student
    cfg = run.cfg
    own_opt, own_sched = make_optimizer(student.parameters(), cfg.lr, cfg.steps, cfg.warmup, cfg.weight_decay)
    own_opt.load_state_dict(member_optimizer_state(opt.state_dict(), i, len(stack.trainable)))
    own_sched.load_state_dict(sched.state_dict())
    return TrainState(student, own_opt, own_sched, run.generator, step=step, history=run.history, queues=run.queues,
                      gallery=run.gallery)


def _save(stack: StackedStudents, opt, sched, i: int, run: _Run, step: int) -> None:
    stack.copy_to(i, run.member.student)
    if run.frozen is not None:
        _restore_module(run)
    save_trainer_state(Path(run.member.out_dir) / "checkpoint", _export(stack, opt, sched, i, run, step), run.cfg)
