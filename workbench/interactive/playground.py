"""The loss playground's logic (notebook 04): one cached training batch, and everything its sliders change.

A :class:`CachedBatch` freezes one training batch of the built-in world: B images with one own caption each, the
student's in-batch logits ``s`` [B, B], the semantic-positive mask, the teacher's logit and probability for every
pair, and the world's graded relevance. From it, without retraining, for any K, T, validity rule (threshold / m)
and λ (:class:`Settings`):

- the slates of both directions, as the trainer builds them with ``pool="batch"``: each query's own positive,
  then its K hardest in-batch negatives by student score (positives never mined);
- the objective ``L = L_ITC + λ · L_distill``, each term averaged over the two directions (as ``fit`` does),
  ITC over the whole in-batch row, the distillation loss over the slates;
- the per-pair gradient weights ``∂L_d/∂s`` on every slate entry of direction d (autograd, no closed form);
- the implied target order: the teacher's order over the *valid* negatives; invalid ones sit below every valid
  one, with no order among themselves (docs/method.md, "CPRD").

Everything here is a pure function of tensors and returns tensors, dataclasses or DataFrames; the widgets in
:mod:`workbench.interactive.widgets` draw them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from workbench.checks import check_choice, check_float, check_int, check_tensor
from workbench.data.world import Split
from workbench.losses import Loss, ScoreBatch, get_loss, loss_spec
from workbench.losses.cprd import valid_negatives
from workbench.models.student import DualEncoder
from workbench.training.batches import sample_pairs
from workbench.training.config import ITC, FitConfig, LossTerm

DIRECTIONS = ("i2t", "t2i")
TEACHER_OUTPUTS = ("logit", "probability")
TeacherFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``teacher(img long [P], cap long [P]) -> (logits [P], probs [P])``, e.g. a ``TeacherScores``."""


# ------------------------------------------------------------------------------------------- the cached batch


@dataclass(frozen=True)
class CachedBatch:
    """One training batch, frozen: every tensor is [B, B] with rows = images and columns = captions.

    Attributes:
        sim: float, student logits ``scale * <image_i, caption_j>`` (detached).
        positive: bool, the caption is true for the image (semantic ground truth); the diagonal is always True.
        teacher_logit, teacher_prob: float, the teacher's ITM logit and match probability of every pair.
        relevance: float in [0, 1], the fraction of the caption's facts that hold in the image.
        images, captions: long [B], split indices; texts: the B caption strings; scenes: the B scene descriptions.
    """

    sim: torch.Tensor
    positive: torch.Tensor
    teacher_logit: torch.Tensor
    teacher_prob: torch.Tensor
    relevance: torch.Tensor
    images: torch.Tensor
    captions: torch.Tensor
    texts: tuple[str, ...]
    scenes: tuple[str, ...]

    def __post_init__(self) -> None:
        check_tensor("sim", self.sim, ndim=2, dtype="float")
        B = self.sim.shape[0]
        if self.sim.shape != (B, B) or B < 2:
            raise ValueError(f"sim must be a square [B, B] matrix with B >= 2, got shape {tuple(self.sim.shape)}")
        check_tensor("positive", self.positive, shape=(B, B), dtype="bool")
        for name in ("teacher_logit", "teacher_prob", "relevance"):
            check_tensor(name, getattr(self, name), shape=(B, B), dtype="float")
        if not bool(self.positive.diagonal().all()):
            raise ValueError("positive must be True on the diagonal (each image's own caption)")
        if len(self.texts) != B or len(self.scenes) != B:
            raise ValueError(f"texts and scenes must hold B={B} strings, got {len(self.texts)} and {len(self.scenes)}")

    @property
    def size(self) -> int:
        """B, the number of image-caption pairs."""
        return self.sim.shape[0]

    def max_k(self) -> int:
        """The largest K every query of both directions can fill with negatives."""
        return int((~self.positive).sum(1).min().minimum((~self.positive).sum(0).min()))

    def oriented(self, direction: str, name: str) -> torch.Tensor:
        """Tensor ``name`` with rows = queries of ``direction`` ("i2t": images; "t2i": captions)."""
        check_choice("direction", direction, DIRECTIONS)
        x = getattr(self, name)
        return x if direction == "i2t" else x.T

    def teacher(self, direction: str, output: str) -> torch.Tensor:
        """float [B, B]: teacher scores as the losses see them (``"logit"`` or ``"probability"``), query rows."""
        check_choice("teacher_output", output, TEACHER_OUTPUTS)
        return self.oriented(direction, "teacher_logit" if output == "logit" else "teacher_prob")

    def candidate_text(self, direction: str, j: int) -> str:
        """What candidate ``j`` of ``direction`` shows: a caption (i2t) or a scene description (t2i)."""
        return self.texts[j] if direction == "i2t" else self.scenes[j]

    def query_text(self, direction: str, i: int) -> str:
        return self.scenes[i] if direction == "i2t" else self.texts[i]


@torch.no_grad()
def cache_batch(split: Split, student: DualEncoder, teacher: TeacherFn, *, batch: int = 32, seed: int = 0,
                positives: str = "semantic") -> CachedBatch:
    """Sample a training batch (as ``fit`` does), embed it with ``student``, and score every pair with ``teacher``.

    Args:
        split: the world's training split.
        student: the dual encoder whose similarities (and so whose hard negatives) the playground shows.
        teacher: ``(img, cap) -> (logits, probs)`` on split indices, e.g. ``workspace.teacher_scores()``.
        batch: B, pairs in the batch (B * B teacher scores are computed once).
        seed: which batch.
        positives: ``"semantic"`` (every true caption) or ``"coco"`` (own captions only), as ``FitConfig.positives``.
    """
    check_int("batch", batch, min_value=2, max_value=split.num_images)
    check_choice("positives", positives, ["semantic", "coco"])
    img, cap = sample_pairs(split, batch, torch.Generator().manual_seed(seed))
    student.eval()
    device = next(student.parameters()).device
    e_img = student.encode_image(split.images[img].to(device)).float()
    e_txt = student.encode_text(split.tokens[cap].to(device)).float()
    sim = (student.logit_scale * e_img @ e_txt.T).float().cpu()  # [B, B]
    grid_img, grid_cap = img[:, None].expand(batch, batch).reshape(-1), cap[None, :].expand(batch, batch).reshape(-1)
    logits, probs = teacher(grid_img, grid_cap)
    return CachedBatch(
        sim=sim,
        positive=split.relations()[positives].block(img, cap) | torch.eye(batch, dtype=torch.bool),
        teacher_logit=logits.float().cpu().reshape(batch, batch),
        teacher_prob=probs.float().cpu().reshape(batch, batch),
        relevance=split.relevance_block(img, cap).float(),
        images=img,
        captions=cap,
        texts=tuple(split.texts[c] for c in cap.tolist()),
        scenes=tuple(split.scenes[i].describe() for i in img.tolist()),
    )


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    """What the playground's controls set: the slates (K), the distillation loss and its weight.

    Attributes:
        k: hard negatives per query (slate = own positive + K).
        lam: λ, the weight of the distillation term next to ITC.
        teacher_output: what the loss sees as u: ``"logit"`` or ``"probability"``.
        loss: the registered loss used as the distillation term (any name in ``list_losses()``).
        params: its hyperparameters, validated by the registry; after construction every one is present
            (defaults filled in), e.g. CPRD's ``validity``, ``threshold`` (in the units of ``teacher_output``),
            ``m`` and ``temperature``.

    ``Settings.of(k=8, validity="top", m=3)`` is the short spelling (unknown keywords go to ``params``).
    """

    k: int = 8
    lam: float = 1.0
    teacher_output: str = "logit"
    loss: str = "cprd"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int("k", self.k, min_value=1)
        check_float("lam", self.lam, min_value=0.0)
        check_choice("teacher_output", self.teacher_output, TEACHER_OUTPUTS)
        object.__setattr__(self, "params", loss_spec(self.loss).bind(**dict(self.params)))

    @classmethod
    def of(cls, *, k: int = 8, lam: float = 1.0, teacher_output: str = "logit", loss: str = "cprd",
           **params: Any) -> Settings:
        """``Settings(k, lam, teacher_output, loss, params)`` with the loss's hyperparameters as keywords."""
        return cls(k=k, lam=lam, teacher_output=teacher_output, loss=loss, params=params)

    def make_loss(self) -> Loss:
        """The registry's ``loss`` bound to ``params``."""
        return get_loss(self.loss, **self.params)

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes``: k / lam / teacher_output / loss by name, anything else a hyperparameter (a new
        ``loss`` starts from its own defaults)."""
        own = {k: changes.pop(k) for k in ("k", "lam", "teacher_output", "loss") if k in changes}
        params = changes if own.get("loss", self.loss) != self.loss else {**self.params, **changes}
        return replace(self, **own, params=params)


# -------------------------------------------------------------------------------------------------- slates


def slate_columns(s: torch.Tensor, positive: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: its own candidate (the diagonal) then its ``k`` highest-scoring non-positive candidates.

    Args:
        s: float [B, C] student scores (query rows); positive: bool [B, C]; candidate ``i`` is query ``i``'s own.

    Returns:
        ``(columns long [B, 1+k], valid bool [B, 1+k])``; ``valid`` is False (and the column 0) where a row has
        fewer than ``k`` negatives. Ties: lower column first, like the miner.
    """
    check_int("k", k, min_value=1)
    B = s.shape[0]
    key = s.detach().masked_fill(positive, float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]  # [B, k]
    room = (~positive).sum(1, keepdim=True)  # [B, 1]
    valid = torch.arange(order.shape[1])[None, :] < room
    own = torch.arange(B)[:, None]
    columns = torch.cat([own, torch.where(valid, order, 0)], 1)
    valid = torch.cat([torch.ones_like(own, dtype=torch.bool), valid], 1)
    if k > order.shape[1]:  # more negatives asked for than candidates: pad
        pad = k - order.shape[1]
        columns = torch.cat([columns, columns.new_zeros(B, pad)], 1)
        valid = torch.cat([valid, valid.new_zeros(B, pad)], 1)
    return columns, valid


def slate_batch(s: torch.Tensor, u: torch.Tensor, columns: torch.Tensor, valid: torch.Tensor) -> ScoreBatch:
    """The distillation ``ScoreBatch`` ``[own positive, K negatives]`` gathered from ``s`` (keeps its grad)."""
    student = torch.where(valid, s.gather(1, columns), 0.0)
    teacher = torch.where(valid, u.gather(1, columns), 0.0)
    positive = torch.zeros_like(valid)
    positive[:, 0] = True
    return ScoreBatch(student=student, positive=positive, teacher=teacher, mask=valid)


def ordered_negatives(batch: ScoreBatch, settings: Settings) -> torch.Tensor:
    """bool [B, L]: the negatives whose teacher order the loss teaches. A loss with a ``validity`` rule (cprd,
    cprd_chain): the rule's valid hard negatives; another loss that reads only negatives (ranknet, listnet,
    listmle): every negative; a loss that reads scores rather than orders (infonce, kl, mse, margin_mse): none."""
    neg = batch.negative
    p = settings.params
    if "validity" in p:
        key = torch.where(neg, batch.require_teacher(settings.loss).detach(), float("-inf"))
        rule_args = {k: p[k] for k in ("threshold", "m") if k in p}
        return valid_negatives(key, neg, validity=p["validity"], **rule_args)
    if loss_spec(settings.loss).entries == "negatives":
        return neg
    return torch.zeros_like(neg)


def why_empty(result: DirectionResult, settings: Settings, rows: int) -> str | None:
    """In words, why the distillation term does nothing on the first ``rows`` queries of ``result`` (no ordered
    negative, or no gradient at all); ``None`` when it does something there."""
    batch, p = result.batch, settings.params
    ordered = ordered_negatives(batch, settings)[:rows]
    if "validity" in p and not ordered.any():
        u = batch.teacher[:rows][batch.negative[:rows]]
        best = f"{float(u.max()):.2f}" if u.numel() else "none (no negatives)"
        if p["validity"] == "threshold":
            return (f"No valid negatives in these {rows} {result.direction} queries: the rule 'threshold' keeps a "
                    f"negative only if the teacher scores it u ≥ θ = {p['threshold']:.2f} ({settings.teacher_output}"
                    f"), and its highest score on the K = {settings.k} mined negatives is {best}. Lower θ below "
                    "that, or choose the rule 'top' or 'all'.")
        return (f"No valid negatives in these {rows} {result.direction} queries under the rule "
                f"'{p['validity']}': nothing for the teacher to order, so the term has no gradient here.")
    if not bool(result.grad_distill[:rows].any()):
        return (f"The term '{settings.loss}' has no gradient on these {rows} {result.direction} queries (its value "
                f"is {result.distill:.4g} whatever the student's scores).")
    return None


# --------------------------------------------------------------------------------------------- the objective


@dataclass(frozen=True)
class DirectionResult:
    """One direction's slates and what the objective does to them.

    Attributes:
        direction: "i2t" or "t2i".
        columns: long [B, 1+K], candidate index of each slate entry (entry 0: the query's own positive).
        batch: the slate ``ScoreBatch`` (student scores detached).
        grad_itc, grad_distill: float [B, 1+K], ``∂L_ITC,d / ∂s`` and ``∂L_distill,d / ∂s`` at each slate entry
            (0 on padding); ``grad`` = ``grad_itc + lam * grad_distill``, the objective's.
        itc, distill: this direction's loss values; lam: λ.
    """

    direction: str
    columns: torch.Tensor
    batch: ScoreBatch
    grad_itc: torch.Tensor
    grad_distill: torch.Tensor
    itc: float
    distill: float
    lam: float

    @property
    def grad(self) -> torch.Tensor:
        """float [B, 1+K]: ``∂(L_ITC,d + λ · L_distill,d) / ∂s`` on the slate."""
        return self.grad_itc + self.lam * self.grad_distill


@dataclass(frozen=True)
class Objective:
    """``total = itc + lam * distill``, each term the mean over the two directions (what ``fit`` optimises)."""

    total: float
    itc: float
    distill: float
    lam: float
    directions: dict[str, DirectionResult]


def direction_objective(cached: CachedBatch, direction: str, loss: Loss, *, k: int, lam: float,
                        teacher_output: str) -> DirectionResult:
    """ITC over the in-batch row + ``lam`` x ``loss`` over the K-slates of one direction, with its gradient."""
    s = cached.oriented(direction, "sim").clone().requires_grad_(True)  # [B, B] leaf
    positive = cached.oriented(direction, "positive")
    itc = sum(get_loss("infonce")(ScoreBatch(student=s, positive=positive)).values())
    columns, valid = slate_columns(s, positive, k)
    batch = slate_batch(s, cached.teacher(direction, teacher_output), columns, valid)
    distill = sum(loss(batch).values())
    grads = [_slate_grad(value, s, columns, valid) for value in (itc, distill)]
    detached = ScoreBatch(student=batch.student.detach(), positive=batch.positive, teacher=batch.teacher,
                          mask=batch.mask)
    return DirectionResult(direction, columns, detached, grads[0], grads[1], itc.item(), distill.item(), lam)


def _slate_grad(value: torch.Tensor, s: torch.Tensor, columns: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """float [B, 1+K]: ``∂value/∂s`` gathered on the slate (zeros where ``value`` does not depend on ``s``)."""
    grad = None
    if value.requires_grad:
        (grad,) = torch.autograd.grad(value, s, retain_graph=True, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(s)
    return torch.where(valid, grad.gather(1, columns), 0.0)


def objective(cached: CachedBatch, settings: Settings, loss: Loss | None = None) -> Objective:
    """The training objective on the cached batch under ``settings`` (``loss`` replaces ``settings``' when given)."""
    loss = loss or settings.make_loss()
    out = {d: direction_objective(cached, d, loss, k=settings.k, lam=settings.lam,
                                  teacher_output=settings.teacher_output) for d in DIRECTIONS}
    itc = sum(r.itc for r in out.values()) / 2
    distill = sum(r.distill for r in out.values()) / 2
    return Objective(itc + settings.lam * distill, itc, distill, settings.lam, out)


def implied_order(cached: CachedBatch, settings: Settings, result: DirectionResult, query: int) -> pd.DataFrame:
    """One query's slate as the loss sees it: the positive, then the valid negatives in the teacher's order (the
    target order CPRD teaches), then the invalid ones (below every valid one, unordered; by student score here).

    Columns: role, target (1..J for valid negatives), candidate, text, student (s), student_rank (1 = hardest
    negative), teacher (u), relevance (ground truth), pull (``-∂L/∂s``: > 0 pushes s up).
    """
    check_int("query", query, min_value=0, max_value=cached.size - 1)
    b, d = result.batch, result.direction
    ordered = ordered_negatives(b, settings)[query]
    s, u, g = b.student[query], b.teacher[query], result.grad[query]
    cols = result.columns[query]
    rel = cached.oriented(d, "relevance")[query]
    valid_idx = [int(j) for j in torch.nonzero(ordered).flatten()]
    valid_idx.sort(key=lambda j: (-float(u[j]), j))
    invalid_idx = [j for j in range(1, len(cols)) if b.mask[query, j] and not ordered[j]]
    rows = []
    for role, entries in (("positive", [0]), ("valid", valid_idx), ("invalid", invalid_idx)):
        for n, j in enumerate(entries, start=1):
            c = int(cols[j])
            rows.append({"role": role, "target": n if role == "valid" else None, "candidate": c,
                         "text": cached.candidate_text(d, c), "student": float(s[j]),
                         "student_rank": j if j > 0 else None, "teacher": float(u[j]), "relevance": float(rel[c]),
                         "pull": -float(g[j])})
    return pd.DataFrame(rows)


def order_agreement(result: DirectionResult, settings: Settings) -> float:
    """Fraction of pairs of ordered (valid) negatives that the student already ranks in the teacher's order."""
    b = result.batch
    ordered = ordered_negatives(b, settings)
    s, u = b.student, b.teacher
    pairs = ordered[:, :, None] & ordered[:, None, :] & (u[:, :, None] > u[:, None, :])  # [B, L, L]
    if not bool(pairs.any()):
        return float("nan")
    agree = (s[:, :, None] > s[:, None, :]) & pairs
    return int(agree.sum()) / int(pairs.sum())


# -------------------------------------------------------------------------------------------- comparisons


def compare_losses(cached: CachedBatch, losses: Mapping[str, Loss], settings: Settings) -> pd.DataFrame:
    """Each loss as the distillation term on the cached slates (K, λ, teacher output from ``settings``).

    Columns: ``distill`` (its value) and ``total`` (ITC + λ · distill), each the mean of the i2t and t2i values
    (``DIRECTIONS_NOTE``); ``grad_norm`` (L2 norm of ``∂L/∂s`` on the slates, both directions), ``pull_valid``
    (mean ``-∂L/∂s`` on the negatives ``settings``' loss orders, both directions).
    """
    rows = {}
    for name, loss in losses.items():
        obj = objective(cached, settings, loss)
        grads = [r.grad for r in obj.directions.values()]
        valid = [ordered_negatives(r.batch, settings) for r in obj.directions.values()]
        pull = torch.cat([-g[v] for g, v in zip(grads, valid, strict=True)])
        rows[name] = {"distill": obj.distill, "total": obj.total,
                      "grad_norm": float(torch.cat([g.flatten() for g in grads]).norm()),
                      "pull_valid": float(pull.mean()) if len(pull) else float("nan")}
    return pd.DataFrame.from_dict(rows, orient="index")


DIRECTIONS_NOTE = ("loss values are the mean of the image→text and text→image values (as training averages them); "
                   "a value printed for one direction alone differs")

RunFn = Callable[..., dict[str, Any]]


def compare_runs(ws: Any, terms: Mapping[str, LossTerm | None], base: FitConfig, *,
                 out_dir: str | Path | None = None, train: RunFn | None = None,
                 overwrite: bool = False) -> pd.DataFrame:
    """A short training run per distillation term (ITC + the term; ``None`` = ITC alone), one table row each.

    Args:
        ws: a :class:`~workbench.experiments.runs.Workspace`.
        terms: row name -> the distillation ``LossTerm`` added to ITC (or ``None``).
        base: the run settings (its ``losses`` are replaced); same seed for every row.
        out_dir: when given, each run is written to ``out_dir/<row name>`` like a CLI run.
        overwrite: replace runs already in those folders (without it they are an error).
        train: ``train_student_run`` (injectable for tests).

    Columns: final training loss, validation semantic RSUM, test R@1 both directions, test RSUM, minimal pairs.
    """
    if train is None:
        from workbench.experiments import train_run as train
    rows = {}
    for name, term in terms.items():
        cfg = base.with_(losses=(LossTerm(ITC),) + ((term,) if term is not None else ()))
        history: list[dict] = []
        folder = Path(out_dir) / name if out_dir is not None else None
        m = train(ws, cfg, folder, rerank=False, callbacks=(lambda step, row, h=history: h.append(row),),
                  overwrite=overwrite)
        sem = m["retrieval"]["semantic"]
        rows[name] = {"loss": history[-1]["loss"] if history else float("nan"),
                      "val_rsum": history[-1].get("val_semantic_rsum", float("nan")) if history else float("nan"),
                      "r1_i2t": sem["r1_i2t"], "r1_t2i": sem["r1_t2i"], "rsum": sem["rsum"],
                      "minimal_pairs": m.get("minimal_pairs", {}).get("mean", float("nan"))}
    return pd.DataFrame.from_dict(rows, orient="index")
