"""The experiment plan of ``python -m workbench reproduce`` as one typed table: which student runs answer which
question.

Every row is a :class:`Variant`: a name, the group it belongs to, the question it answers, a label for reports,
its loss terms and the config fields it changes from the shared distillation setting (:data:`BASE`). A group's
variants differ from the headline's in one thing. The analyses (:mod:`workbench.experiments.reproduce`) read the
variants' fields (a term's weight, a teacher view, a validity rule's parameters), never their names. Profiles set the
sizes (steps, seeds) and which optional variants run.

Add a variant by adding a row to :func:`variants`; its group's analysis picks it up from its fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench.checks import check_int
from workbench.experiments.parallel import Job
from workbench.training.config import FitConfig, LossTerm, profile

ITC = LossTerm("itc")
GROUPS = ("headline", "baselines", "room", "scale", "intervention", "negatives", "lambda", "validity", "controlled",
          "levers", "tuning")
ALL_GROUPS = tuple(g for g in GROUPS if g != "tuning")
"""The groups ``reproduce --groups`` can ask for (the tuning grid runs whenever a profile has one)."""

# The distillation setting shared by every method (a group changes one thing).
BASE: dict[str, Any] = {"pool": "gallery", "k": 8, "positives": "coco", "refresh_every": 100}
CPRD = LossTerm("cprd", 1.0, {"validity": "top", "m": 4})


@dataclass(frozen=True)
class Variant:
    """One planned student configuration (a row of the plan).

    Attributes:
        name: unique within the plan; run folders are ``<group>/<name>_seed<s>`` and findings.json keys it.
        group: one of :data:`GROUPS`.
        question: what the run answers (shown in the report).
        label: how tables name it.
        losses: the loss terms (ITC first).
        changes: FitConfig fields changed from :data:`BASE` (besides ``losses``).
        controlled: settings of a ground-truth teacher to distil from instead of the trained one.
        rerank: evaluate the teacher re-ranking this student too.
        probe: track gradient coordination over training.
        seeds: ``"main"`` (the profile's headline seed count), ``"extra"`` (its count for the other groups) or
            ``"tune"`` (the profile's tuning seed only; :mod:`workbench.experiments.tuning`).
    """

    name: str
    group: str
    question: str
    label: str
    losses: tuple[LossTerm, ...] = (ITC,)
    changes: Mapping[str, Any] = field(default_factory=dict)
    controlled: Mapping[str, Any] | None = None
    rerank: bool = False
    probe: bool = False
    seeds: str = "extra"

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"variant {self.name!r}: group must be one of {GROUPS}, got {self.group!r}")
        if self.seeds not in ("main", "extra", "tune"):
            raise ValueError(f"variant {self.name!r}: seeds must be 'main', 'extra' or 'tune', got {self.seeds!r}")

    @property
    def distill(self) -> LossTerm | None:
        """The distillation term (the first term other than ITC), if any."""
        return next((t for t in self.losses if t.name != ITC.name), None)

    def config(self, p: ReproduceProfile, seed: int) -> FitConfig:
        """This variant's FitConfig under profile ``p`` for one seed."""
        sizes = {"warmup": p.warmup} if p.warmup is not None else {}
        base = profile(p.fit, steps=p.steps, seed=seed, eval_every=max(1, p.steps // p.evals), **sizes)
        return replace(base, **{**BASE, **dict(self.changes), "losses": self.losses})


@dataclass(frozen=True)
class ReproduceProfile:
    """Sizes of a reproduce run: steps, seeds, and which optional variants run.

    Attributes:
        scale_views / lambdas / validity / controlled: the optional variants of those groups that run (variant
            names); levers: whether the mining-pool / K variants run.
    """

    name: str
    world: str  # WORLD_PRESETS key
    fit: str  # training profile (smoke | quick | full)
    steps: int
    seeds: int  # seeds of the headline table and the baselines
    extra_seeds: int  # seeds of every other group
    scale_views: tuple[str, ...]  # teacher views besides "logit" for the scale check
    lambdas: tuple[float, ...]  # CPRD weights besides 1
    validity: tuple[str, ...]  # validity variants (names without the "cprd_" prefix) besides top-4
    controlled: tuple[str, ...]  # controlled-teacher variants (names without the "cprd_" prefix)
    levers: bool = False  # mining pool and K
    workers: int = 2
    prefill: int = 16  # teacher-score store prefill: top-M of the first ITC student per train query (0 = off)
    probe_seeds: int = 3  # runs (seeds) of each headline method that track gradient coordination
    full_list: str = "all"  # Finding 2's "full list": "all" (the whole batch) or "hard+easy" (K hard + K easy)
    groups: tuple[str, ...] | None = None  # the groups run when none are asked for (None: all)
    methods: tuple[str, ...] | None = None  # the headline methods (METHODS keys, ITC first; None: all)
    orders: tuple[str, ...] = ("random", "truth")  # Finding 2's intervention: orders besides the teacher's (ORDERS)
    warmup: int | None = None  # warm-up steps (None: the fit profile's)
    first: tuple[str, ...] = ()  # variants trained first, in this order (the rest follow in plan order)
    departures: tuple[str, ...] = ()  # where this profile departs from docs/protocol.md (shown in the report)
    evals: int = 4  # validation evaluations per run (eval_every = steps // evals)
    tune_lambdas: tuple[float, ...] = ()  # the tuning grid's λ values (empty: no tuning, every method at λ = 1)
    tune_views: tuple[str, ...] = ("logits", "logits/4")  # the grid's teacher views (workbench.experiments.tuning)
    tune_seed: int = 100  # the one seed of the tuning runs (never a test seed)

    @property
    def stated_departures(self) -> tuple[str, ...]:
        """Where this profile departs from docs/protocol.md: its seed counts (below § 4's) and :attr:`departures`."""
        seeds = seed_departure(self)
        return ((seeds,) if seeds else ()) + self.departures

    def seed_list(self, variant: Variant) -> tuple[int, ...]:
        """The seeds ``variant`` runs with under this profile."""
        if variant.seeds == "tune":
            return (self.tune_seed,)
        return tuple(range(self.seeds if variant.seeds == "main" else self.extra_seeds))

    def schedule(self, todo: list[Job]) -> list[Job]:
        """``todo`` with the variants of :attr:`first` first (in that order), the others after them in plan order."""
        rank = {name: i for i, name in enumerate(self.first)}
        return sorted(todo, key=lambda j: rank.get(j.variant, len(rank)))


PROTOCOL_SEEDS = 5  # docs/protocol.md § 4: seeds of every group in the full profile

METHODS: dict[str, tuple[tuple[LossTerm, ...], str]] = {  # the headline methods, all on the same slates
    "itc": ((ITC,), "ITC only"),
    "kl": ((ITC, LossTerm("kl", 1.0)), "ITC + KL"),
    "mse": ((ITC, LossTerm("mse", 1.0, {"standardize": True})), "ITC + MSE (standardised)"),
    "ranknet": ((ITC, LossTerm("ranknet", 1.0)), "ITC + RankNet"),
    "listnet": ((ITC, LossTerm("listnet", 1.0)), "ITC + ListNet"),
    "listmle": ((ITC, LossTerm("listmle", 1.0)), "ITC + ListMLE"),
    "cprd": ((ITC, CPRD), "ITC + CPRD (top-4)"),
    "cprd_chain": ((ITC, LossTerm("cprd_chain", 1.0, {"validity": "top", "m": 4})),
                   "ITC + CPRD as one chain with the positive on the mined slate (top-4)"),
}
VALIDITY = {  # CPRD's validity variants: name -> (cprd hyperparameters, label)
    "top1": ({"validity": "top", "m": 1}, "CPRD, the teacher's top-1 hard negative"),
    "top2": ({"validity": "top", "m": 2}, "CPRD, top-2"),
    "all": ({"validity": "all"}, "CPRD, all K (= ListMLE)"),
    "threshold0": ({"validity": "threshold", "threshold": 0.0}, "CPRD, teacher logit >= 0"),
    "threshold-4": ({"validity": "threshold", "threshold": -4.0}, "CPRD, teacher logit >= -4"),
    "top4_steps": ({"validity": "top", "m": 4, "normalize": "steps"}, "CPRD, top-4, steps averaged"),
}
CONTROLLED = {  # ground-truth teachers: name -> (ControlledTeacher settings, label)
    "truth": ({"noise": 0.0}, "CPRD, ground-truth teacher (relevance incl. relations, no noise)"),
    "truth_noise2": ({"noise": 2.0}, "CPRD, ground-truth teacher + noise (std 2 logits)"),
    "mentions_only": ({"noise": 0.0, "relations": False},
                      "CPRD, ground-truth teacher that ignores relations (an order a relation-blind student can "
                      "represent)"),
}
ORACLE = {"positives": "semantic", "near_misses": True, "near_miss_count": 0, "group_batches": True}
"""The oracle student's privileged signal (the room's upper end, ``research/room/room_runs.py``)."""
ORDERS = {  # Finding 2's intervention: the order ListMLE distils, as a ControlledTeacher -> (settings, label)
    "random": ({"concentration": 0.0, "noise": 1.0}, "a random order (a fixed random score per pair)"),
    "truth": ({"noise": 1e-3}, "the true-relevance order (ties broken by a fixed random score)"),
}
WINDOWS = {"hard": ({}, "the student's K hard negatives"),
           "easy": ({"negatives": "easy", "easy_rank": 64}, "K easy negatives (sampled beyond rank 64)")}
SCALE_VIEWS = {"probability": "the teacher's match probabilities", "tempered": "the teacher's logits / 4"}


def variants(p: ReproduceProfile) -> list[Variant]:
    """Every variant the profile runs, headline first (its ITC run feeds the store prefill)."""
    methods = p.methods or tuple(METHODS)
    rows = [Variant(m, "headline", "How much does each distillation method add to ITC, at weight 1?",
                    METHODS[m][1], METHODS[m][0], rerank=m == "itc", probe=m != "itc", seeds="main")
            for m in methods]
    rows += [
        Variant("mined_itc", "baselines", "Do the mined slates alone (no teacher) help?",
                "ITC + InfoNCE on the mined slates (no teacher)", (ITC, LossTerm("infonce")), seeds="main"),
        Variant("negclip", "baselines", "Do caption near-misses as negatives (no teacher) help?",
                "ITC + caption near-misses (NegCLIP-style, no teacher)", changes={"near_misses": True}, seeds="main"),
    ]
    rows.append(Variant("oracle", "room", "How far could a student get with privileged negatives (the room)?",
                        "oracle student: every near-miss as a negative, contrast-group batches, semantic positives "
                        "(ITC only, privileged)", changes=ORACLE, seeds="main"))
    for method in ("kl", "cprd"):  # Finding 1: the teacher's logits vs probabilities vs tempered logits
        rows += [Variant(f"{method}_{view}", "scale", "Does the teacher's score scale change what transfers?",
                         f"{METHODS[method][1]}, fed {SCALE_VIEWS[view]}", METHODS[method][0],
                         changes={"teacher_output": view, "teacher_temperature": 4.0}) for view in p.scale_views]
    full = {"negatives": "all", "pool": "batch"} if p.full_list == "all" else {"negatives": "hard+easy",
                                                                                  "easy_rank": 64}
    rows += _intervention(p)
    rows += [  # Finding 2: the full list (hard = the headline's listmle)
        Variant(f"listmle_{p.full_list.replace('+', '_')}", "negatives", "Does the full list add to hard negatives?",
                "all (whole batch)" if p.full_list == "all" else "hard + easy (K of each)", METHODS["listmle"][0],
                changes=full),
    ]
    rows += [Variant(f"cprd_lambda{lam:g}", "lambda", "How does CPRD's weight trade off against ITC?",
                     f"CPRD, λ = {lam:g}", (ITC, replace(CPRD, weight=lam))) for lam in p.lambdas]
    rows += [Variant(f"cprd_{name}", "validity", "Which hard negatives should be valid?", VALIDITY[name][1],
                     (ITC, LossTerm("cprd", 1.0, VALIDITY[name][0]))) for name in p.validity]
    rows += [Variant(f"cprd_{name}", "controlled", "Which teacher order can the student learn?", CONTROLLED[name][1],
                     METHODS["cprd"][0], controlled=CONTROLLED[name][0]) for name in p.controlled]
    if p.levers:  # what a careful researcher checks: the mining pool, K
        rows += [Variant("cprd_batch_pool", "levers", "Does the mining pool matter?",
                         "CPRD, in-batch mining (the paper's setting)", METHODS["cprd"][0], changes={"pool": "batch"}),
                 Variant("cprd_queue_pool", "levers", "Does the mining pool matter?",
                         "CPRD, mining from a queue of recent batches", METHODS["cprd"][0], changes={"pool": "queue"}),
                 Variant("cprd_k16", "levers", "Does K matter?", "CPRD, K = 16 mined negatives", METHODS["cprd"][0],
                         changes={"k": 16})]
    _check_unique(rows)
    return rows


def _intervention(p: ReproduceProfile) -> list[Variant]:
    """Finding 2's intervention: ListMLE over hard or easy negatives, distilling the teacher's order or one of
    ``p.orders`` (hard + the teacher's order is the headline's ``listmle``)."""
    rows = []
    for window, (changes, where) in WINDOWS.items():
        for order in ("teacher", *p.orders):
            if window == "hard" and order == "teacher":
                continue
            what = "the teacher's order" if order == "teacher" else ORDERS[order][1]
            rows.append(Variant(f"listmle_{window}" + ("" if order == "teacher" else f"_{order}"), "intervention",
                                "Which order over which negatives carries knowledge?", f"ListMLE over {where}, {what}",
                                METHODS["listmle"][0], changes=changes,
                                controlled=None if order == "teacher" else ORDERS[order][0]))
    return rows


def _check_unique(rows: list[Variant]) -> None:
    names = [v.name for v in rows]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"variant names must be unique in a plan, got duplicates {duplicated}")


PROFILES = {
    "smoke": ReproduceProfile("smoke", "smoke", "smoke", 30, 2, 1, ("probability",), (0.25,), ("threshold0",),
                              ("truth",), levers=True, prefill=4, probe_seeds=1, full_list="hard+easy"),
    "quick": ReproduceProfile("quick", "default", "quick", 200, 3, 1, ("probability",), (0.25,),
                              ("threshold0",), ("truth", "mentions_only"), probe_seeds=1, full_list="hard+easy",
                              departures=("200 steps: far from converged on the default world (ITC's validation "
                                          "plateau is near 2,000 steps), a check that every analysis runs, not a "
                                          "verdict", "no tuning grid: every method at λ = 1 on the teacher's logits")),
    # the protocol (docs/protocol.md): S = 2,000 steps from the learning curves (§ 2), the tuning grid on seed 100
    # (§ 3), 5 seeds for every group (§ 4). Hours of a GPU, days of a 2-core CPU.
    "full": ReproduceProfile("full", "default", "full", 2000, 5, 5, ("probability", "tempered"), (0.25, 0.5, 2.0),
                             tuple(VALIDITY), tuple(CONTROLLED), levers=True, workers=4, warmup=100, evals=20,
                             tune_lambdas=(0.25, 0.5, 1.0, 2.0),
                             departures=("the ablation groups (scale, λ, validity, controlled teachers, levers, "
                                         "full list) vary one thing from the untuned λ = 1 on logits; only the "
                                         "headline, baselines and Finding 2's arms use the tuned points",)),
    # make demo: the headline table with 3 seeds and the Finding 1 figures in minutes on a 2-core CPU. NOT at
    # convergence on the default world (contrast-chain-v1 + moments-v1): ITC's validation RSUM at 500 steps is ~7 %
    # below its plateau, reached at ~2,000 steps (benchmarks/results/room/); converged comparisons need `full`.
    # the fair test at the largest size a 2-core CPU finishes in a few hours (docs/protocol.md, "CPU profile"):
    # 2,000 steps (ITC's validation RSUM within 1 % of its plateau, learning curves in benchmarks/results/room/),
    # 3 seeds, the headline's ITC / CPRD / ListMLE / KL at λ = 1 (no tuning grid) and Finding 2's intervention.
    "cpu": ReproduceProfile("cpu", "default", "full", 2000, 3, 3, (), (), (), (), probe_seeds=0,
                            groups=("headline", "intervention", "baselines"),
                            methods=("itc", "cprd", "listmle", "kl", "cprd_chain"),
                            orders=("random", "truth"), warmup=100, evals=10,
                            first=("itc", "cprd", "listmle", "listmle_hard_random", "listmle_hard_truth", "negclip",
                                   "cprd_chain", "mined_itc", "kl", "listmle_easy", "listmle_easy_random",
                                   "listmle_easy_truth"),
                            departures=("no tuning grid: every method at "
                                        "λ = 1 on the teacher's logits", "methods: ITC, CPRD, ListMLE, KL, and (added "
                                        "after seeing CPRD's first two seeds) cprd_chain, mined_itc, negclip; no MSE, "
                                        "RankNet, ListNet",
                                        "no oracle run: the room is the room issue's (benchmarks/results/room/)",
                                        "learning curves from the room issue's ITC runs (validation every 1/8, "
                                        "not 1/20, of 4,000 steps)")),
    "demo": ReproduceProfile("demo", "default", "quick", 600, 3, 1, (), (), (), (), probe_seeds=0,
                             full_list="hard+easy", groups=("headline",),
                             methods=("itc", "kl", "mse", "ranknet", "listnet", "listmle", "cprd"),
                             departures=("600 steps: not converged on the default world (ITC's validation RSUM is "
                                         "~7 % below its plateau)", "no tuning grid: every method at λ = 1 on the "
                                         "teacher's logits", "the headline group only")),
}


def with_seeds(p: ReproduceProfile, seeds: int | None) -> ReproduceProfile:
    """``p`` with ``seeds`` seeds for every group (``None``: ``p`` unchanged)."""
    if seeds is None:
        return p
    check_int("seeds", seeds, min_value=1)
    return replace(p, seeds=seeds, extra_seeds=seeds)


def seed_departure(p: ReproduceProfile) -> str | None:
    """The protocol's seed counts (docs/protocol.md § 4: 5 for every group) where ``p`` departs from them."""
    if min(p.seeds, p.extra_seeds) >= PROTOCOL_SEEDS:
        return None
    if p.seeds == p.extra_seeds:
        return f"{p.seeds} seed{'s' * (p.seeds > 1)} for every group, not the protocol's {PROTOCOL_SEEDS}"
    return (f"{p.seeds} seeds for the headline and baselines and {p.extra_seeds} for the other groups, not the "
            f"protocol's {PROTOCOL_SEEDS}")


def jobs(p: ReproduceProfile, out: Path, table: list[Variant] | None = None) -> list[Job]:
    """One job per (variant, seed): run folders ``out/<group>/<name>_seed<s>``."""
    every = max(1, p.steps // 4)
    return [Job(out / v.group / f"{v.name}_seed{s}", v.config(p, s), v.rerank,
                dict(v.controlled) if v.controlled is not None else None,
                every if v.probe and s < p.probe_seeds else 0, v.name, s)
            for v in (variants(p) if table is None else table) for s in p.seed_list(v)]


def plan(p: ReproduceProfile, out: Path) -> dict[str, list[Job]]:
    """Every group's jobs (headline first)."""
    grouped: dict[str, list[Job]] = {}
    table = variants(p)
    for job in jobs(p, out, table):
        group = next(v.group for v in table if v.name == job.variant)
        grouped.setdefault(group, []).append(job)
    return grouped
