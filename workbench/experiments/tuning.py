"""Equal tuning on the validation split (``docs/protocol.md`` § 3): the same grid for every method.

Every tuned method (a headline or baseline variant with a distillation term) is trained on one tuning seed at each
point of the profile's grid, λ (the term's weight) × the teacher's view (its logits, or its logits ÷ 4). Where the
teacher's scale cannot change the loss (:data:`SCALE_FREE`: losses that read only the teacher's order, or
standardise it) the two views are the same run, trained and counted once; a loss without a teacher has λ only.
The chosen point is the highest final validation semantic RSUM (ties: the smaller λ, then the logits); the final
runs of the method (and Finding 2's intervention arms, at ListMLE's λ) use it. The test split is never read here.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from workbench.experiments.parallel import Job
from workbench.experiments.plan import ITC, ReproduceProfile, Variant
from workbench.io import read_json
from workbench.losses.registry import loss_spec

VIEWS: dict[str, dict[str, Any]] = {"logits": {},
                                    "logits/4": {"teacher_output": "tempered", "teacher_temperature": 4.0}}
"""The teacher views of the grid: FitConfig changes from the teacher's logits."""
SCALE_FREE = ("ranknet", "listmle", "cprd", "cprd_chain", "mse")
"""Losses that a positive rescaling of the teacher's scores cannot change (tests/test_tuning.py checks each): the
order-only ones (RankNet, ListMLE, CPRD and its chain with top-m validity) and MSE on standardised scores."""


def views_of(term_name: str, params: dict[str, Any], views: tuple[str, ...]) -> tuple[str, ...]:
    """The grid's views that can change ``term_name``: none for a loss without a teacher, the first only for a
    scale-free one (a CPRD whose validity rule reads the teacher's values, e.g. a threshold, is not scale-free)."""
    if not loss_spec(term_name).needs_teacher:
        return ("logits",)
    order_only = term_name in SCALE_FREE and params.get("validity", "top") in ("top", "all")
    if order_only and (term_name != "mse" or params.get("standardize", False)):
        return views[:1]
    return views


def tuned_methods(table: list[Variant]) -> list[Variant]:
    """The variants the grid tunes: headline and baseline rows with a distillation term."""
    return [v for v in table if v.group in ("headline", "baselines") and v.distill is not None]


def with_point(v: Variant, lam: float, view: str) -> Variant:
    """``v`` with its distillation term's weight ``lam`` and the teacher view ``view`` (same name and group)."""
    losses = tuple(replace(t, weight=lam) if t is v.distill else t for t in v.losses)
    return replace(v, losses=losses, changes={**dict(v.changes), **VIEWS[view]})


def grid_points(p: ReproduceProfile, v: Variant) -> list[tuple[float, str, str]]:
    """``(λ, view, run name)`` of every grid point of method ``v``; run names are ``<method>__l<λ>_<view>``."""
    return [(lam, view, f"{v.name}__l{lam:g}_{view.replace('/', '_')}")
            for view in views_of(v.distill.name, v.distill.params, p.tune_views) for lam in p.tune_lambdas]


def grid_variants(p: ReproduceProfile, table: list[Variant]) -> list[Variant]:
    """One ``tuning`` variant per method and grid point (:func:`grid_points`), trained on the tuning seed only."""
    return [replace(with_point(v, lam, view), name=name, group="tuning", label=f"{v.label}; λ = {lam:g}, teacher "
                    f"{view}", rerank=False, probe=False, seeds="tune")
            for v in tuned_methods(table) for lam, view, name in grid_points(p, v)]


def val_rows(run: Path) -> list[dict[str, Any]]:
    """The rows of ``run/history.json`` that hold a validation semantic RSUM (one per evaluation, in step order)."""
    return [r for r in read_json(run / "history.json") if "val_semantic_rsum" in r]


def final_val_rsum(run: Path) -> float | None:
    """The last validation semantic RSUM in ``run/history.json`` (None when the run logged none)."""
    rows = val_rows(run)
    return float(rows[-1]["val_semantic_rsum"]) if rows else None


def choose(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The chosen grid point: highest ``val_rsum``; ties go to the smaller ``lambda``, then to the logits view.

    ``points``: ``[{"lambda", "view", "val_rsum"}]`` (points without a finite value, e.g. a diverged run, are
    skipped)."""
    scored = [q for q in points if q.get("val_rsum") is not None and math.isfinite(q["val_rsum"])]
    if not scored:
        raise ValueError(f"choose needs at least one grid point with a finite validation RSUM, got {points!r}")
    return max(scored, key=lambda q: (q["val_rsum"], -q["lambda"], q["view"] == "logits"))


def grid_results(p: ReproduceProfile, table: list[Variant], done: list[Job]) -> dict[str, dict[str, Any]]:
    """``{method: {"grid": [points], "chosen": point}}`` from the finished tuning jobs ``done``."""
    folders = {j.variant: j.out_dir for j in done}
    out = {}
    for v in tuned_methods(table):
        points = [{"lambda": lam, "view": view, "run": name,
                   "val_rsum": final_val_rsum(folders[name]) if name in folders else None}
                  for lam, view, name in grid_points(p, v)]
        if any(q["val_rsum"] is not None for q in points):
            out[v.name] = {"grid": points, "chosen": choose(points), "seed": p.tune_seed}
    return out


def apply_choice(table: list[Variant], tuning: dict[str, dict[str, Any]]) -> list[Variant]:
    """``table`` with every tuned method at its chosen point, and Finding 2's intervention arms at ListMLE's λ."""
    chosen = {name: t["chosen"] for name, t in tuning.items()}
    out = []
    for v in table:
        if v.name in chosen and v.group in ("headline", "baselines"):
            lam, view = chosen[v.name]["lambda"], chosen[v.name]["view"]
            v = replace(with_point(v, lam, view), label=f"{v.label} [tuned: λ = {lam:g}, teacher {view}]")
        elif v.group == "intervention" and "listmle" in chosen and v.distill is not None:
            lam = chosen["listmle"]["lambda"]
            v = replace(v, losses=(ITC, replace(v.distill, weight=lam)), label=f"{v.label} [ListMLE's λ = {lam:g}]")
        out.append(v)
    return out
