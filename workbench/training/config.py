"""Typed configuration of a student training run, with presets (a frozen dataclass with a comment on every field and
small built-in modes, as nanoGPT's GPTConfig and big_vision's ``runlocal`` configs).

A run is ``FitConfig`` + a list of loss terms. The CLI spells a term ``name:weight=1.0,key=value,...``::

    python -m workbench train --loss itc --loss cprd:weight=1.0,validity=threshold,threshold=0.5 --steps 600

``itc`` is the student's own in-batch contrastive loss (the registry's ``infonce`` over in-batch slates with
multi-positive masks); every other registered loss is a distillation term applied to mined slates
(each query's own positive + K student-mined negatives, scored by the teacher).
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from workbench.checks import check_choice, check_float, check_int

ITC = "itc"


@dataclass(frozen=True)
class LossTerm:
    """One term of the objective: a registered loss name, its weight and its hyperparameters."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"loss name must be a non-empty string, got {self.name!r}")
        check_float(f"weight of loss {self.name!r}", self.weight, min_value=0.0)
        if not isinstance(self.params, dict):
            raise TypeError(f"params of loss {self.name!r} must be a dict, got {type(self.params).__name__}")

    @classmethod
    def parse(cls, text: str) -> LossTerm:
        """Parse ``"cprd:weight=1.0,validity=threshold,threshold=0.5"`` (values as Python literals or strings)."""
        name, _, rest = text.partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, raw = item.partition("=")
            if not eq or not key:
                raise ValueError(f"loss term {text!r}: expected key=value pairs after ':', got {item!r}")
            params[key.strip()] = _literal(raw.strip())
        weight = params.pop("weight", 1.0)
        return cls(name.strip(), weight, params)

    def spell(self) -> str:
        """The CLI spelling of this term (inverse of :meth:`parse`)."""
        items = [f"weight={self.weight:g}"] + [f"{k}={v}" for k, v in self.params.items()]
        return f"{self.name}:{','.join(items)}"


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


@dataclass(frozen=True)
class FitConfig:
    """Everything that defines a student training run on the built-in world (written to ``config.json``)."""

    losses: tuple[LossTerm, ...] = (LossTerm(ITC),)
    steps: int = 1500
    batch: int = 128
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    positives: str = "semantic"  # positives for ITC and mining: "semantic" (ground truth) or "coco" (own captions)
    near_misses: bool = False  # NegCLIP-style: each caption's near-miss as an extra i2t negative (no teacher)
    near_miss_count: int = 1  # near-misses per caption (distinct kinds); 0 = every available kind
    near_miss_flip_weight: float = 1.0  # sampling weight of "flip_relation" relative to the other kinds
    group_batches: bool = False  # privileged: batches of whole contrast groups (worlds with split.groups)
    # --- distillation slates (used only when a term other than itc is present)
    k: int = 8  # mined negatives per query (read only when a distillation term is present)
    pool: str = "batch"  # mining pool: "batch" | "queue" (batch + recent embeddings) | "gallery" (whole split)
    queue_size: int = 4096
    refresh_every: int = 100  # gallery pool: re-embed the training split every N steps
    # "hard": student top-K; "easy": K sampled beyond rank easy_rank; "hard+easy": both (2K); "all": the whole batch
    negatives: str = "hard"
    easy_rank: int = 32
    teacher_output: str = "logit"  # what losses see as u: "logit", "probability", or "tempered" (logit / T)
    teacher_temperature: float = 1.0
    # teacher-detected false negatives: drop mined negatives whose teacher probability is >= match_threshold from
    # every distillation slate (neither ordered nor in any denominator), for every distillation term alike
    drop_teacher_matches: bool = False
    match_threshold: float = 0.5
    # --- bookkeeping
    eval_every: int = 500
    checkpoint_every: int = 0  # 0 = only at the end
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA

    def __post_init__(self) -> None:
        if not self.losses:
            raise ValueError("losses must hold at least one term, got an empty list")
        names = [t.name for t in self.losses]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"loss term names must be unique (each term is applied and logged by its name), got "
                             f"{repeated} more than once in {names}: give each loss once, with its total weight")
        for name in ("steps", "batch", "eval_every"):
            check_int(name, getattr(self, name), min_value=1)
        check_int("batch", self.batch, min_value=2)
        for name in ("warmup", "seed", "checkpoint_every", "easy_rank"):
            check_int(name, getattr(self, name), min_value=0)
        check_float("lr", self.lr, min_value=0.0, strict_min=True)
        check_float("weight_decay", self.weight_decay, min_value=0.0)
        check_choice("positives", self.positives, ["semantic", "coco"])
        check_int("near_miss_count", self.near_miss_count, min_value=0)
        check_float("near_miss_flip_weight", self.near_miss_flip_weight, min_value=0.0)
        check_int("k", self.k, min_value=1)
        check_choice("pool", self.pool, ["batch", "queue", "gallery"])
        check_int("queue_size", self.queue_size, min_value=1)
        check_int("refresh_every", self.refresh_every, min_value=1)
        check_choice("negatives", self.negatives, ["hard", "easy", "hard+easy", "all"])
        check_choice("teacher_output", self.teacher_output, ["logit", "probability", "tempered"])
        check_float("teacher_temperature", self.teacher_temperature, min_value=0.0, strict_min=True)
        check_float("match_threshold", self.match_threshold, min_value=0.0, max_value=1.0)
        if self.negatives == "all" and self.pool != "batch":
            raise ValueError(f"negatives='all' takes the whole batch: it needs pool='batch', got {self.pool!r}")
        if self.distill_terms and self.pool == "batch" and self.negatives == "hard" and self.k >= self.batch:
            raise ValueError(f"k={self.k} must be smaller than the batch ({self.batch}) when mining in-batch")

    @property
    def distill_terms(self) -> tuple[LossTerm, ...]:
        return tuple(t for t in self.losses if t.name != ITC)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["losses"] = [asdict(t) for t in self.losses]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FitConfig field(s) {sorted(unknown)}; valid fields: {sorted(known)}")
        d = dict(d)
        if "losses" in d:
            d["losses"] = tuple(LossTerm(**t) if isinstance(t, dict) else t for t in d["losses"])
        return cls(**d)

    def with_(self, **changes: Any) -> FitConfig:
        return replace(self, **changes)


PROFILES: dict[str, dict[str, Any]] = {
    # ~seconds: tests and CI smoke runs
    "smoke": {"steps": 30, "batch": 32, "eval_every": 15, "k": 4},
    # a few minutes on a 2-core CPU: make demo
    "quick": {"steps": 600, "batch": 128, "eval_every": 300},
    # the full experiment (GPU or patient CPU)
    "full": {"steps": 3000, "batch": 128, "eval_every": 500},
}


def profile(name: str, **overrides: Any) -> FitConfig:
    """A preset FitConfig (``smoke`` | ``quick`` | ``full``) with overrides."""
    check_choice("profile", name, list(PROFILES))
    return FitConfig(**{**PROFILES[name], **overrides})
