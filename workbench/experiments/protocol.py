"""The fair test's analyses (``docs/protocol.md``): paired comparisons by seed, convergence checks, Finding 2's order
intervention and Finding 3 on shared slates, computed from a reproduce run's finished jobs.

Every function returns JSON-ready dicts for ``findings.json``; the verdict rules that read them live in
:mod:`workbench.findings.verdicts`.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from workbench.evaluation.slates import EvalSlates
from workbench.experiments.parallel import Job
from workbench.experiments.plan import BASE, ITC, METHODS, ORDERS, Variant
from workbench.experiments.tuning import val_rows
from workbench.findings.agreement import accuracy_by_gap
from workbench.findings.coordination import shared_slate_coordination
from workbench.findings.stats import paired_difference, plateau_step, seed_stats
from workbench.training.checkpoint import load_student
from workbench.training.config import FitConfig

RANKING, LOGIT = ("listmle", "cprd", "ranknet"), ("kl", "mse")
"""Finding 1's two families of distillation methods (headline variant names)."""
Seeded = dict[str, dict[int, float]]
"""``{variant: {seed: value}}``."""


def per_seed(done: list[Job], value) -> Seeded:
    """``value(job)`` of every finished job, by variant and seed (``value`` may return None to skip a job)."""
    out: Seeded = {}
    for job in done:
        v = value(job)
        if v is not None:
            out.setdefault(job.variant, {})[job.seed] = float(v)
    return out


def test_rsum(results: dict[Path, dict], protocol: str = "semantic"):
    """A ``value`` for :func:`per_seed`: a job's test RSUM under ``protocol``."""
    return lambda job: results[job.out_dir]["retrieval"][protocol]["rsum"]


def paired_against(values: Seeded, reference: str) -> dict[str, dict[str, Any]]:
    """Every variant with >= 2 seeds shared with ``reference``, minus ``reference``, paired by seed."""
    ref = values.get(reference, {})
    return {name: paired_difference(v, ref) for name, v in values.items()
            if name != reference and len(set(v) & set(ref)) >= 2}


def reference_minus(values: Seeded, reference: str) -> dict[str, dict[str, Any]]:
    """``reference`` minus every other variant with >= 2 shared seeds, paired by seed (e.g. CPRD − each method)."""
    ref = values.get(reference, {})
    return {name: paired_difference(ref, v) for name, v in values.items()
            if name != reference and len(set(v) & set(ref)) >= 2}


def convergence(done: list[Job], *, tolerance: float = 0.01, window: int = 3) -> dict[str, dict[str, Any]]:
    """Per variant: its final validation semantic RSUM over seeds and which seeds' curves still rise by more than
    ``tolerance`` over their last ``window`` evaluations (flagged, not retrained: § 2 of the protocol)."""
    finals, rising = {}, {}
    for job in done:
        rows = val_rows(job.out_dir)
        if len(rows) < window:
            continue
        curve = plateau_step([r["step"] for r in rows], [r["val_semantic_rsum"] for r in rows],
                             tolerance=tolerance, window=window)
        finals.setdefault(job.variant, []).append(rows[-1]["val_semantic_rsum"])
        if not curve["converged_at_end"]:
            rising.setdefault(job.variant, []).append(job.seed)
    return {name: {"final_val_rsum": seed_stats(xs), "still_rising_seeds": rising.get(name, [])}
            for name, xs in finals.items()}


def best_of(family: tuple[str, ...], conv: dict[str, dict[str, Any]]) -> str | None:
    """The method of ``family`` with the highest mean final validation RSUM (None if none ran)."""
    ran = [m for m in family if m in conv]
    return max(ran, key=lambda m: conv[m]["final_val_rsum"]["mean"]) if ran else None


def transfer(rsums: Seeded, conv: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Finding 1 (b): the best ranking minus the best logit method (chosen on validation), test RSUM by seed."""
    rank, logit = best_of(RANKING, conv), best_of(LOGIT, conv)
    diff = paired_difference(rsums[rank], rsums[logit]) if rank and logit else None
    return {"ranking": rank, "logit": logit, "chosen_by": "mean final validation semantic RSUM",
            "difference": diff}


def arm_name(v: Variant) -> str | None:
    """``"<window>/<order>"`` of a Finding 2 intervention arm (the headline's ListMLE is hard/teacher), else None."""
    if v.distill is None or v.distill.name != "listmle" or v.group not in ("headline", "intervention"):
        return None
    window = v.changes.get("negatives", "hard")
    order = next((o for o, (settings, _) in ORDERS.items() if v.controlled == settings), None)
    if v.controlled is not None and order is None:
        return None
    return f"{window}/{order or 'teacher'}"


CONTRASTS = {"hard: teacher - random": ("hard/teacher", "hard/random"),
             "easy: teacher - random": ("easy/teacher", "easy/random"),
             "hard: truth - random": ("hard/truth", "hard/random"),
             "easy: truth - random": ("easy/truth", "easy/random"),
             "teacher: hard - easy": ("hard/teacher", "easy/teacher")}


def intervention(rsums: Seeded, table: list[Variant], slates: dict[str, EvalSlates]) -> dict[str, Any]:
    """Finding 2's arms (test RSUM over seeds), the protocol's contrasts (paired), and the teacher's pairwise
    accuracy against the truth by relevance gap in the hard and easy windows of the evaluation slates."""
    arms = {a: rsums[v.name] for v in table if (a := arm_name(v)) and v.name in rsums}
    contrasts = {k: paired_difference(arms[a], arms[b]) for k, (a, b) in CONTRASTS.items()
                 if a in arms and b in arms and len(set(arms[a]) & set(arms[b])) >= 2}
    accuracy = {d: {w: accuracy_by_gap(sl.teacher.numpy(), sl.relevance.numpy(), getattr(sl, w).numpy())
                    for w in ("hard", "easy")} for d, sl in slates.items()}
    return {"arms": {a: seed_stats([xs[s] for s in sorted(xs)]) for a, xs in arms.items()},
            "contrasts": contrasts, "teacher_accuracy": accuracy}


def shared_slates(ws, itc_jobs: list[Job], methods: list[str]) -> dict[str, Any]:
    """Finding 3 like with like: each ITC seed's student, its validation slates, every headline method's term
    (:func:`~workbench.findings.coordination.shared_slate_coordination`), then per-term statistics over seeds and
    the protocol's paired contrasts."""
    terms = (METHODS["itc"][0][0], *(METHODS[m][0][1] for m in methods if m != "itc"))
    cfg = FitConfig(**{**BASE, "losses": terms, "amp": False, "device": "cpu"})
    data, scores = SimpleNamespace(train=ws.world.val), ws.teacher_scores("val")
    per_seed_out = {}
    for job in sorted(itc_jobs, key=lambda j: j.seed):
        student = load_student(job.out_dir / "checkpoint", device="cpu")
        per_seed_out[job.seed] = shared_slate_coordination(student, cfg, data, scores, seed=job.seed)
    metrics = ("neg_up", "above_pos", "held_out_itc_change", "grad_log_scale")
    table = {t.name: {k: {s: out[t.name][k] for s, out in per_seed_out.items() if out[t.name][k] is not None}
                      for k in metrics} for t in terms}
    contrasts = {}
    for metric, other in (("held_out_itc_change", "listmle"), ("held_out_itc_change", "kl"), ("neg_up", "listmle")):
        if "cprd" in table and other in table and len(table["cprd"][metric]) >= 2:
            contrasts[f"{'held-out ITC change' if metric != 'neg_up' else 'neg_up'}: cprd - {other}"] = \
                paired_difference(table["cprd"][metric], table[other][metric])
    return {"per_seed": {str(s): out for s, out in per_seed_out.items()},
            "stats": {t: {k: seed_stats(list(v.values())) for k, v in ms.items() if v} for t, ms in table.items()},
            "contrasts": contrasts, "reference": ITC.name}


def room(rsums: Seeded, oracle: str = "oracle") -> dict[str, Any] | None:
    """The room (oracle - ITC, paired by seed) when the profile trained an oracle student, else None."""
    if oracle not in rsums or len(set(rsums[oracle]) & set(rsums.get("itc", {}))) < 2:
        return None
    diff = paired_difference(rsums[oracle], rsums["itc"])
    return {"rsum": diff["mean"], "difference": diff}


def seeds_of(done: list[Job], variant: str) -> list[Job]:
    """The finished jobs of one variant, in seed order."""
    return sorted((j for j in done if j.variant == variant), key=lambda j: j.seed)

