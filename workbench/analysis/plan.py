"""The experiment plan of ``python -m workbench reproduce``: which student runs answer which question.

Every run is a :class:`~workbench.analysis.parallel.Job` in a named group; a group's runs differ from the
``base`` distillation setting in one thing. Profiles set the size (steps, seeds, which groups run).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workbench.analysis.parallel import Job
from workbench.training.config import FitConfig, LossTerm, profile

ITC = LossTerm("itc")
ALL_GROUPS = ("headline", "baselines", "scale", "negatives", "lambda", "validity", "controlled", "levers")

# The distillation setting shared by every method (a group changes one thing).
BASE: dict[str, Any] = {"pool": "gallery", "k": 8, "positives": "coco", "refresh_every": 100}
CPRD = LossTerm("cprd", 1.0, {"validity": "top", "m": 4})

METHODS: dict[str, tuple[LossTerm, ...]] = {  # findings.json method keys -> loss terms (all on the same slates)
    "itc": (ITC,),
    "kl": (ITC, LossTerm("kl", 1.0)),
    "mse": (ITC, LossTerm("mse", 1.0, {"standardize": True})),
    "ranknet": (ITC, LossTerm("ranknet", 1.0)),
    "listnet": (ITC, LossTerm("listnet", 1.0)),
    "listmle": (ITC, LossTerm("listmle", 1.0)),
    "cprd": (ITC, CPRD),
}
EXTRA_BASELINES: dict[str, dict[str, Any]] = {
    "mined_itc": {"losses": (ITC, LossTerm("infonce"))},  # the same mined slates, no teacher: hard-negative ITC
    "negclip": {"near_misses": True},  # caption perturbations as extra negatives, no teacher
}


VALIDITY_RULES = {"top1": {"validity": "top", "m": 1}, "top2": {"validity": "top", "m": 2},
                  "all": {"validity": "all"}, "threshold0": {"validity": "threshold", "threshold": 0.0},
                  "threshold-4": {"validity": "threshold", "threshold": -4.0},
                  "top4_steps": {"validity": "top", "m": 4, "normalize": "steps"}}
CONTROLLED = {"truth": {"noise": 0.0}, "truth_noise2": {"noise": 2.0},
              "mentions_only": {"noise": 0.0, "relations": False}}


@dataclass(frozen=True)
class ReproduceProfile:
    """Sizes of a reproduce run: steps, seeds, and which variants of each group run."""

    name: str
    world: str  # WORLD_PRESETS key
    fit: str  # training profile (smoke | quick | full)
    steps: int
    seeds: int  # seeds of the headline table and the baselines
    extra_seeds: int  # seeds of every other group
    scale_views: tuple[str, ...]  # teacher views besides "logit" for the scale check
    lambdas: tuple[float, ...]  # CPRD weights besides 1
    validity: tuple[str, ...]  # VALIDITY_RULES keys besides top-4
    controlled: tuple[str, ...]  # CONTROLLED keys
    levers: bool = False  # mining pool and K
    workers: int = 2
    prefill: int = 16  # teacher-score store prefill: top-M of the first ITC student per train query (0 = off)
    probe_seeds: int = 3  # runs (seeds) of each headline method that track gradient coordination
    full_list: str = "all"  # Finding 2's "full list": "all" (the whole batch) or "hard+easy" (K hard + K easy)


PROFILES = {
    "smoke": ReproduceProfile("smoke", "smoke", "smoke", 30, 2, 1, ("probability",), (0.25,), ("threshold0",),
                              ("truth",), levers=True, prefill=4, probe_seeds=1, full_list="hard+easy"),
    "quick": ReproduceProfile("quick", "default", "quick", 200, 3, 1, ("probability",), (0.25,),
                              ("threshold0",), ("truth", "mentions_only"), probe_seeds=1, full_list="hard+easy"),
    "full": ReproduceProfile("full", "default", "full", 1500, 3, 2, ("probability", "tempered"), (0.25, 0.5, 2.0),
                             tuple(VALIDITY_RULES), tuple(CONTROLLED), levers=True, workers=4),
}


def fit_config(p: ReproduceProfile, seed: int, **changes: Any) -> FitConfig:
    """The base config of a profile, for one seed, with ``changes``."""
    base = profile(p.fit, steps=p.steps, seed=seed, eval_every=max(1, p.steps // 4))
    return replace(base, **{**BASE, **changes})


def _jobs(out: Path, group: str, name: str, p: ReproduceProfile, seeds: int, rerank: bool = False,
          controlled: dict | None = None, probe: bool = False, **changes: Any) -> list[Job]:
    every = max(1, p.steps // 4) if probe else 0
    return [Job(out / group / f"{name}_seed{s}", fit_config(p, s, **changes), rerank, controlled,
                every if s < p.probe_seeds else 0) for s in range(seeds)]


def plan(p: ReproduceProfile, out: Path) -> dict[str, list[Job]]:
    """Every group's jobs. ``headline`` comes first (its ITC runs feed the store prefill)."""
    g: dict[str, list[Job]] = {"headline": [], "baselines": [], "scale": [], "negatives": [], "lambda": [],
                               "validity": [], "controlled": [], "levers": []}
    for method, terms in METHODS.items():
        g["headline"] += _jobs(out, "headline", method, p, p.seeds, rerank=method == "itc", probe=method != "itc",
                               losses=terms)
    for name, changes in EXTRA_BASELINES.items():
        g["baselines"] += _jobs(out, "baselines", name, p, p.seeds, **changes)
    n = p.extra_seeds
    for method in ("kl", "cprd"):  # Finding 1: the teacher's logits vs probabilities vs tempered logits
        for view in p.scale_views:
            g["scale"] += _jobs(out, "scale", f"{method}_{view}", p, n, losses=METHODS[method], teacher_output=view,
                                teacher_temperature=4.0)
    # Finding 2: rank distillation over easy negatives / the whole batch (hard = the headline's listmle)
    g["negatives"] += _jobs(out, "negatives", "listmle_easy", p, n, losses=METHODS["listmle"], negatives="easy",
                            easy_rank=64)
    full = {"negatives": "all", "pool": "batch"} if p.full_list == "all" else {"negatives": "hard+easy",
                                                                                  "easy_rank": 64}
    g["negatives"] += _jobs(out, "negatives", f"listmle_{p.full_list.replace('+', '_')}", p, n,
                            losses=METHODS["listmle"], **full)
    for lam in p.lambdas:  # Finding 3: the weight of CPRD
        g["lambda"] += _jobs(out, "lambda", f"cprd_lambda{lam:g}", p, n, losses=(ITC, replace(CPRD, weight=lam)))
    for name in p.validity:  # beyond the paper: which hard negatives are "valid"
        g["validity"] += _jobs(out, "validity", f"cprd_{name}", p, n,
                               losses=(ITC, LossTerm("cprd", 1.0, VALIDITY_RULES[name])))
    for name in p.controlled:  # ground-truth teachers: is the teacher's order learnable at all?
        g["controlled"] += _jobs(out, "controlled", f"cprd_{name}", p, n, losses=METHODS["cprd"],
                                 controlled=CONTROLLED[name])
    if p.levers:  # what a careful researcher checks: the mining pool, K
        g["levers"] += _jobs(out, "levers", "cprd_batch_pool", p, n, losses=METHODS["cprd"], pool="batch")
        g["levers"] += _jobs(out, "levers", "cprd_queue_pool", p, n, losses=METHODS["cprd"], pool="queue")
        g["levers"] += _jobs(out, "levers", "cprd_k16", p, n, losses=METHODS["cprd"], k=16)
    return {k: v for k, v in g.items() if v}
