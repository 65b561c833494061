"""Finding 3: is a distillation loss *coordinated* with the student's own contrastive loss?

The paper's Finding 3: a distillation objective helps when it pulls the student the same way as its ITC
(InfoNCE) loss; CPRD is built to (ITC is the first Plackett-Luce step "positive above everything", CPRD adds the
next steps). A direct measure: the cosine between the gradients of the ITC term and of a distillation term with
respect to the student's trainable parameters, on the same step's graph. Positive = the two pull together;
near 0 = unrelated; negative = they fight (the prototype saw a CPRD term drag the logit scale down).

- :func:`gradient_cosine` / :func:`gradient_report`: for a dict of loss terms built on one graph;
- :class:`CoordinationProbe`: the same on a fixed probe batch (fixed seed) of the training split, built by the
  trainer's own :func:`~workbench.training.loop.batch_terms`, so it can be tracked over training from a ``fit``
  callback without any analysis code inside the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from workbench.checks import check_int
from workbench.data.nearmiss import build_near_misses
from workbench.data.world import World
from workbench.findings.stats import number
from workbench.losses import ScoreBatch
from workbench.models.student import DualEncoder
from workbench.training.batches import sample_pairs
from workbench.training.config import ITC, FitConfig
from workbench.training.loop import (
    MiningPools,
    batch_terms,
    batch_terms_and_slates,
    build_losses,
    needs_teacher,
    objective,
)

Params = nn.Module | Iterable[tuple[str, torch.Tensor]]


def _named_trainable(params: Params) -> list[tuple[str, torch.Tensor]]:
    named = params.named_parameters() if isinstance(params, nn.Module) else params
    out = [(name, p) for name, p in named if p.requires_grad]
    if not out:
        raise ValueError("params must hold at least one trainable parameter (requires_grad=True), got none")
    return out


def term_gradients(params: Params, terms: Mapping[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Each term's gradient w.r.t. each trainable parameter, on the terms' shared graph (kept for the next term).

    Args:
        params: a module (its trainable parameters) or ``(name, parameter)`` pairs.
        terms: ``{name: scalar loss}`` built on one forward pass (the graph is retained, ``.grad`` untouched).

    Returns:
        ``{name: [grad per parameter]}`` (zeros for a parameter a term does not reach).
    """
    named = _named_trainable(params)
    tensors = [p for _, p in named]
    out = {}
    for name, loss in terms.items():
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"terms[{name!r}] must be a scalar tensor, got {type(loss).__name__} "
                             f"{tuple(getattr(loss, 'shape', ()))}")
        if not loss.requires_grad:
            out[name] = [torch.zeros_like(p) for p in tensors]
            continue
        grads = torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
        out[name] = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, tensors, strict=True)]
    return out


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1).double() for g in grads])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float | None:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return None
    return float((a @ b) / (na * nb))


def gradient_cosine(params: Params, terms: Mapping[str, torch.Tensor], *, reference: str = ITC
                    ) -> dict[str, float | None]:
    """Cosine between the gradient of ``terms[reference]`` and that of every other term.

    Gradients are w.r.t. all trainable parameters of ``params`` (e.g. the student), flattened into one vector,
    computed with ``torch.autograd.grad(..., retain_graph=True)`` on the terms' shared graph.

    Args:
        params: the student (or ``(name, parameter)`` pairs).
        terms: ``{name: scalar loss}`` from one forward pass, ``reference`` among them.
        reference: the term the others are compared with (the ITC term).

    Returns:
        ``{name: cosine in [-1, 1]}`` for every term but ``reference``; ``None`` where a gradient is zero.
    """
    return {k[len("cos_"):]: v for k, v in gradient_report(params, terms, reference=reference).items()
            if k.startswith("cos_")}


def gradient_report(params: Params, terms: Mapping[str, torch.Tensor], *, reference: str = ITC
                    ) -> dict[str, float | None]:
    """:func:`gradient_cosine` plus gradient norms and the gradients of scalar parameters, as flat log keys.

    Returns:
        ``cos_<term>`` (vs ``reference``) for every other term, ``gradnorm_<term>`` for every term, and
        ``grad_<param>_<term>`` for every scalar parameter (e.g. ``grad_log_scale_cprd``: its sign says whether the
        term pushes the student's logit scale down (> 0, gradient descent lowers it) or up).
    """
    if reference not in terms:
        raise ValueError(f"reference {reference!r} must be one of the terms {list(terms)}")
    named = _named_trainable(params)
    grads = term_gradients(named, terms)
    flat = {name: _flat(g) for name, g in grads.items()}
    out: dict[str, float | None] = {}
    for name in terms:
        if name != reference:
            out[f"cos_{name}"] = _cos(flat[reference], flat[name])
    for name in terms:
        out[f"gradnorm_{name}"] = number(flat[name].norm())
    for idx, (pname, p) in enumerate(named):
        if p.numel() == 1:
            out |= {f"grad_{pname.replace('.', '_')}_{name}": number(grads[name][idx]) for name in terms}
    return out


class CoordinationProbe:
    """Gradient coordination on a fixed probe batch, measured on demand during training.

    Each call draws the same batch (``batch`` images with one own caption each, from ``seed``), builds the run's
    loss terms on it with the trainer's own code (:func:`~workbench.training.loop.batch_terms`) and returns
    :func:`gradient_report` (``cos_<term>``, ``gradnorm_<term>``, ``grad_log_scale_<term>``). Nothing of the training
    state changes: no ``.grad``, no optimiser, no RNG but the probe's own; the student's train/eval mode is restored.

    Usage, from outside the loop (the ``fit`` callback receives the history row it just appended; the probe adds
    its values to that row, so they land in ``history.json``)::

        probe = CoordinationProbe(cfg, world, teacher_scores=scores, batch=128, seed=1234)
        fit(cfg, world, student, teacher_scores=scores, callbacks=(probe.callback(student),))

    Args:
        cfg: the run's config (loss terms, weights, mining settings).
        world: the data (its training split is sampled).
        teacher_scores: ``(img [P], cap [P]) -> (logits [P], probs [P])``; needed when ``cfg`` distils.
        batch: probe batch size (default: ``cfg.batch``).
        seed: the probe batch's seed (fixed: every call sees the same pairs).
        reference: the term the others are compared with.
    """

    def __init__(self, cfg: FitConfig, world: World, teacher_scores: Callable | None = None, *,
                 batch: int | None = None, seed: int = 1234, reference: str = ITC):
        names = [t.name for t in cfg.losses]
        if reference not in names or len(names) < 2:
            raise ValueError(f"cfg.losses must hold {reference!r} and at least one other term to compare, got {names}")
        if needs_teacher(cfg) and teacher_scores is None:
            raise ValueError(f"loss terms {[t.name for t in cfg.distill_terms]} need teacher scores: pass "
                             "teacher_scores=TeacherScores(...)")
        self.cfg, self.world, self.teacher = cfg, world, teacher_scores
        self.batch = check_int("batch", cfg.batch if batch is None else batch, min_value=2,
                               max_value=world.train.num_images)
        self.seed, self.reference = check_int("seed", seed, min_value=0), reference
        self._near = build_near_misses(world.train) if cfg.near_misses else None

    def measure(self, student: DualEncoder, pools: MiningPools | None = None) -> dict[str, float | None]:
        """The gradient report of ``student`` on the probe batch (``pools``: a run's mining pools, see
        :func:`~workbench.training.loop.batch_terms`)."""
        was_training = student.training
        try:
            student.train()
            gen = torch.Generator().manual_seed(self.seed)
            img, cap = sample_pairs(self.world.train, self.batch, gen)
            terms = batch_terms(student, self.cfg, self.world, img, cap, gen, teacher_scores=self.teacher,
                                pools=pools, near=self._near)
            return gradient_report(student, terms, reference=self.reference)
        finally:
            student.train(was_training)

    def callback(self, student: DualEncoder) -> Callable[[int, dict[str, Any]], None]:
        """A ``fit`` callback ``cb(step, row)`` that adds the probe's values to the logged ``row`` (in place)."""

        def add_to_row(step: int, row: dict[str, Any]) -> None:
            row.update(self.measure(student))

        return add_to_row


# ---------------------------------------------------------------------------- like with like (issue 14, Finding 3)


def slate_pushes(batch: ScoreBatch, losses: Mapping[str, Callable], *, reference: str = "infonce"
                 ) -> dict[str, dict[str, float | None]]:
    """What each loss asks of the student's scores on one shared slate, compared with ITC on the same slate.

    Gradient descent moves each score along ``push = -dL/ds``. ITC (``infonce``) pushes the positive up and every
    negative down; a distillation term is coordinated with it where it does the same. Scale-free rates (shares, not
    magnitudes), so a loss's weight or normalisation does not enter.

    Args:
        batch: the shared slates (student scores s [B, L], teacher scores, positive / valid masks).
        losses: ``{name: loss}`` (registered losses bound to hyperparameters, e.g. ``get_loss("kl")``).
        reference: the registered name of the contrastive loss the terms are compared with.

    Returns:
        ``{name: {"neg_up": share of the negatives the reference pushes down that the loss pushes up,
        "above_pos": share of negatives the loss pushes up more than the positive (their margin shrinks),
        "pos_down": share of rows whose positive the loss pushes down}}``; the reference itself is included as
        the control (0 / 0 / 0 by construction).
    """
    from workbench.losses import get_loss

    pushes = {name: _push(loss, batch) for name, loss in {reference: get_loss(reference), **losses}.items()}
    neg, pos = batch.negative, batch.positive & batch.mask
    ref_down = neg & (pushes[reference] < 0)
    out = {}
    for name, push in pushes.items():
        pos_push = torch.where(pos, push, 0.0).sum(-1, keepdim=True) / pos.sum(-1, keepdim=True).clamp(min=1)
        rows = pos.any(-1, keepdim=True) & neg
        out[name] = {"neg_up": _share(push > 0, ref_down), "above_pos": _share(push > pos_push, rows),
                     "pos_down": _share((pos_push < 0).squeeze(-1), pos.any(-1))}
    return out


def _push(loss: Callable, batch: ScoreBatch) -> torch.Tensor:
    """float [B, L]: ``-dL/ds`` of a loss's objective on the batch (padding 0)."""
    s = batch.student.detach().clone().requires_grad_(True)
    live = ScoreBatch(student=s, positive=batch.positive, teacher=batch.teacher, mask=batch.mask)
    value = objective(loss(live))
    grad = torch.autograd.grad(value, s, allow_unused=True)[0] if value.requires_grad else None
    return torch.zeros_like(s) if grad is None else torch.where(batch.mask, -grad, 0.0)


def _share(hit: torch.Tensor, where: torch.Tensor) -> float | None:
    n = int(where.sum())
    return number((hit & where).sum() / n) if n else None


def held_out_itc_change(student: nn.Module, terms: Mapping[str, torch.Tensor], held_out: Callable[[], torch.Tensor],
                        *, step: float = 0.05, skip: tuple[str, ...] = ("log_scale",)) -> dict[str, float | None]:
    """The change of a held-out ITC loss after one step along each term's own gradient, taken alone.

    Each term gets a step of the same length (``step`` in parameter space, along ``-grad / ||grad||``), so the
    comparison does not depend on the term's scale or weight. A negative change means the term, by itself, moves
    the student where ITC on held-out data improves. Scalar parameters named in ``skip`` (the logit scale) stay
    fixed: their gradient is reported apart (:func:`gradient_report`). The student is restored after every step.

    Args:
        student: the model whose trainable parameters ``terms`` were built from (one graph, kept).
        terms: ``{name: scalar loss}`` on one training batch (e.g. :func:`~workbench.training.loop.batch_terms`).
        held_out: ``() -> scalar`` held-out ITC loss of the student as it is now (no grad needed).
        step: the step length.

    Returns:
        ``{name: held-out ITC after - before}`` (``None`` where a term's gradient is zero).
    """
    named = [(n, p) for n, p in _named_trainable(student) if n.split(".")[-1] not in skip]
    grads = term_gradients(named, terms)
    with torch.no_grad():
        before = float(held_out())
        out = {}
        for name, g in grads.items():
            norm = torch.sqrt(sum((x.double() ** 2).sum() for x in g))
            if norm == 0:
                out[name] = None
                continue
            saved = [p.detach().clone() for _, p in named]
            for (_, p), x in zip(named, g, strict=True):
                p.sub_(step * x / norm.to(x.dtype))
            out[name] = float(held_out()) - before
            for (_, p), x in zip(named, saved, strict=True):
                p.copy_(x)
    return out


def shared_slate_coordination(student: DualEncoder, cfg: FitConfig, data: Any, teacher_scores: Callable, *,
                              batch: int = 128, seed: int = 0, held_out_seed: int = 1, step: float = 0.05
                              ) -> dict[str, dict[str, float | None]]:
    """Finding 3 comparing like with like: every distillation term of ``cfg`` on one shared mined slate.

    The trainer's own code (:func:`~workbench.training.loop.batch_terms_and_slates`) mines one slate per query of a
    batch drawn from ``data.train`` (positive + the student's K hard negatives, both directions) and builds every
    term of ``cfg`` on it. Per term: :func:`slate_pushes` against ITC (InfoNCE) on that slate (the mean of the two
    directions), :func:`held_out_itc_change` against the ITC loss of another batch of ``data.train`` (a step of
    length ``step`` on the term alone, the logit scale fixed), and the term's gradient on the logit scale
    (``grad_log_scale``: > 0 means the term alone lowers the scale).

    Args:
        student: the student whose state is compared (e.g. a trained ITC student; left unchanged).
        cfg: ITC and the distillation terms to compare (weights are irrelevant: shares and equal-length steps).
        data: anything with a ``train`` split (e.g. ``SimpleNamespace(train=world.val)`` for validation slates).
        teacher_scores: the teacher's scores on that split.

    Returns:
        ``{term: {"neg_up", "above_pos", "pos_down", "held_out_itc_change", "grad_log_scale"}}`` for every term.
    """
    was_training = student.training
    gen = torch.Generator().manual_seed(seed)
    img, cap = sample_pairs(data.train, batch, gen)
    terms, slates = batch_terms_and_slates(student, cfg, data, img, cap, gen, teacher_scores=teacher_scores)
    losses = {name: fn for name, fn in build_losses(cfg).items() if name != ITC}
    shares = [slate_pushes(sl, losses) for sl in slates]
    itc_only = replace(cfg, losses=(next(t for t in cfg.losses if t.name == ITC),))
    held_gen = torch.Generator().manual_seed(held_out_seed)
    held_img, held_cap = sample_pairs(data.train, batch, held_gen)

    def held_out() -> torch.Tensor:
        return batch_terms(student, itc_only, data, held_img, held_cap, torch.Generator().manual_seed(0))[ITC]

    report = gradient_report(student, terms)  # before the steps: they change the parameters in place
    change = held_out_itc_change(student, terms, held_out, step=step)
    student.train(was_training)
    out = {}
    for name in terms:
        key = "infonce" if name == ITC else name
        out[name] = {k: _mean_or_none([s[key][k] for s in shares]) for k in ("neg_up", "above_pos", "pos_down")}
        out[name] |= {"held_out_itc_change": change[name],
                      "grad_log_scale": report.get(f"grad_log_scale_{name}")}
    return out


def _mean_or_none(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None
