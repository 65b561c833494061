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


@dataclass(frozen=True)
class ReproduceProfile:
    """Sizes of a reproduce run."""

    name: str
    world: str  # WORLD_PRESETS key
    fit: str  # training profile (smoke | quick | full)
    steps: int
    seeds: int  # seeds of the headline table
    extra_seeds: int  # seeds of every other group
    lambdas: tuple[float, ...]
    groups: tuple[str, ...]
    workers: int = 2


ALL_GROUPS = ("headline", "baselines", "scale", "negatives", "lambda", "validity", "controlled", "levers")
PROFILES = {
    "smoke": ReproduceProfile("smoke", "smoke", "smoke", 30, 2, 1, (0.5, 2.0), ALL_GROUPS),
    "quick": ReproduceProfile("quick", "default", "quick", 400, 3, 1, (0.25, 4.0),
                              ("headline", "baselines", "scale", "negatives", "lambda", "validity")),
    "full": ReproduceProfile("full", "default", "full", 2000, 3, 3, (0.25, 0.5, 2.0, 4.0), ALL_GROUPS),
}


def fit_config(p: ReproduceProfile, seed: int, **changes: Any) -> FitConfig:
    """The base config of a profile, for one seed, with ``changes``."""
    base = profile(p.fit, steps=p.steps, seed=seed, eval_every=max(1, p.steps // 4))
    return replace(base, **{**BASE, **changes})


def _jobs(out: Path, group: str, name: str, p: ReproduceProfile, seeds: int, rerank: bool = False,
          controlled: dict | None = None, probe: bool = False, **changes: Any) -> list[Job]:
    every = max(1, p.steps // 4) if probe else 0
    return [Job(out / group / f"{name}_seed{s}", fit_config(p, s, **changes), rerank, controlled, every)
            for s in range(seeds)]


def plan(p: ReproduceProfile, out: Path) -> dict[str, list[Job]]:
    """Every group's jobs (only the groups the profile runs)."""
    groups: dict[str, list[Job]] = {}
    add = groups.setdefault
    if "headline" in p.groups:
        for method, terms in METHODS.items():
            add("headline", []).extend(_jobs(out, "headline", method, p, p.seeds, rerank=method == "itc",
                                             probe=method != "itc", losses=terms))
    if "baselines" in p.groups:
        for name, changes in EXTRA_BASELINES.items():
            add("baselines", []).extend(_jobs(out, "baselines", name, p, p.seeds, **changes))
    n = p.extra_seeds
    if "scale" in p.groups:  # Finding 1: the teacher's logits vs probabilities vs tempered logits
        for method in ("kl", "listmle", "cprd"):
            for view in ("probability", "tempered"):
                add("scale", []).extend(_jobs(out, "scale", f"{method}_{view}", p, n, losses=METHODS[method],
                                              teacher_output=view, teacher_temperature=4.0))
    if "negatives" in p.groups:  # Finding 2: rank distillation over hard-only / easy-only / the whole batch
        add("negatives", []).extend(_jobs(out, "negatives", "listmle_easy", p, n, losses=METHODS["listmle"],
                                          negatives="easy", easy_rank=64))
        add("negatives", []).extend(_jobs(out, "negatives", "listmle_all", p, n, losses=METHODS["listmle"],
                                          negatives="all", pool="batch"))
    if "lambda" in p.groups:  # Finding 3: the weight of CPRD
        for lam in p.lambdas:
            add("lambda", []).extend(_jobs(out, "lambda", f"cprd_lambda{lam:g}", p, n,
                                           losses=(ITC, replace(CPRD, weight=lam))))
    if "validity" in p.groups:  # beyond the paper: which hard negatives are "valid"
        for name, params in {"top1": {"validity": "top", "m": 1}, "top2": {"validity": "top", "m": 2},
                             "all": {"validity": "all"}, "threshold0": {"validity": "threshold", "threshold": 0.0},
                             "threshold-4": {"validity": "threshold", "threshold": -4.0},
                             "top4_steps": {"validity": "top", "m": 4, "normalize": "steps"}}.items():
            add("validity", []).extend(_jobs(out, "validity", f"cprd_{name}", p, n,
                                             losses=(ITC, LossTerm("cprd", 1.0, params))))
    if "controlled" in p.groups:  # the ground-truth teacher: how do gains depend on teacher quality?
        for noise in (0.0, 2.0):
            add("controlled", []).extend(_jobs(out, "controlled", f"cprd_truth_noise{noise:g}", p, n,
                                               losses=METHODS["cprd"], controlled={"noise": noise}))
    if "levers" in p.groups:  # what a careful researcher checks: pool, K
        add("levers", []).extend(_jobs(out, "levers", "cprd_batch_pool", p, n, losses=METHODS["cprd"], pool="batch"))
        add("levers", []).extend(_jobs(out, "levers", "cprd_queue_pool", p, n, losses=METHODS["cprd"], pool="queue"))
        add("levers", []).extend(_jobs(out, "levers", "cprd_k16", p, n, losses=METHODS["cprd"], k=16))
    return groups
