"""``python -m workbench reproduce``: the paper's three findings on the built-in world, from real runs.

Trains every run of the plan (:mod:`workbench.experiments.plan`, in parallel workers, resuming finished runs), then
analyses them: Finding 1 (score distributions, logit vs ranking KD, the scale check), Finding 2 (teacher/student/
truth agreement over hard and easy negatives, the hard/easy/all ablation), Finding 3 (methods at matched weight,
the λ sweep, gradient coordination), the validity rules, and the headline table. Writes ``report.md``,
``findings.json``, the figures (PNG + SVG, ``figures/``), the runs and the teacher-score store, all under ``out``
(nothing in the repository: ``make figures`` copies a demo's figures to the README's ``figures/``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.device import release_host_memory
from workbench.evaluation.evaluate import evaluate_teacher
from workbench.evaluation.slates import EvalSlates, build_eval_slates
from workbench.experiments import protocol as fair
from workbench.experiments.parallel import Job, finished, run_jobs
from workbench.experiments.plan import (
    BASE,
    METHODS,
    PROFILES,
    VALIDITY,
    ReproduceProfile,
    Variant,
    jobs,
    variants,
    with_seeds,
)
from workbench.experiments.runs import fill_store
from workbench.experiments.tuning import apply_choice, grid_results, grid_variants
from workbench.experiments.workspace import WORLD_PRESETS, BuiltinWorkspace, open_workspace
from workbench.findings import figures as fp
from workbench.findings.agreement import agreement_summary, agreement_taus
from workbench.findings.distributions import describe, per_query_stats, scale_spread
from workbench.findings.figures import headline_figure
from workbench.findings.plots import save_figure, world_figure
from workbench.findings.stats import seed_stats
from workbench.findings.verdicts import headline_verdict, verdicts
from workbench.io import read_json, write_json
from workbench.losses.cprd import valid_negatives
from workbench.training.checkpoint import load_student

METRICS = ("r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum")
Runs = dict[str, list[dict]]
"""Test metrics of every finished run, by variant name: one dict per seed (seed order)."""


def by_variant(done: list[Job], results: dict[Path, dict]) -> Runs:
    """Group run metrics by the plan variant of each job (seed order)."""
    out: Runs = {}
    for job in sorted(done, key=lambda j: (j.variant, j.seed)):
        out.setdefault(job.variant, []).append(results[job.out_dir])
    return out


def seed_rsums(runs: Runs) -> dict[str, list[float]]:
    """Semantic test RSUM of each variant, one value per seed."""
    return {name: [r["retrieval"]["semantic"]["rsum"] for r in rs] for name, rs in runs.items()}


def rsum_stats(runs: Runs) -> dict[str, dict[str, Any]]:
    """:func:`~workbench.findings.stats.seed_stats` of each variant's semantic test RSUM."""
    return {name: seed_stats(xs) for name, xs in seed_rsums(runs).items()}


def retrieval_table(runs: Runs, protocol: str, section: str = "retrieval") -> dict[str, dict]:
    """``{name: {metric: seed_stats}}`` over seeds."""
    return {name: {m: seed_stats([r[section][protocol][m] for r in rs]) for m in METRICS}
            for name, rs in runs.items() if all(section in r for r in rs)}


def _in_group(table: list[Variant], group: str) -> list[Variant]:
    return [v for v in table if v.group == group]


def finding1(slates: dict[str, EvalSlates], runs: Runs, table: list[Variant]) -> tuple[dict, dict]:
    """Score distributions per group and view, per-query softmax shape, logit-vs-ranking KD, the scale check."""
    stats, views = {}, {}
    for d, sl in slates.items():
        stats[d], views[d] = _distributions(sl)
    rsum = seed_rsums(runs)
    scale: dict[str, dict[str, list[float]]] = {}
    for v in _in_group(table, "scale"):  # the same method fed another teacher view
        method = next(m for m in ("kl", "cprd") if v.distill is not None and v.distill.name == m)
        scale.setdefault(method, {"logit": rsum.get(method, [])})[v.changes["teacher_output"]] = rsum.get(v.name, [])
    scale = {m: {view: xs for view, xs in d.items() if xs} for m, d in scale.items()}
    out = {"distributions": stats,
           "kd_rsum": {m: seed_stats(rsum[m]) for m in ("itc", "kl", "mse", "listmle", "cprd") if m in rsum},
           "scale_check": {m: {view: seed_stats(xs) for view, xs in d.items()} for m, d in scale.items()},
           "scale_spread": scale_spread({m: d for m, d in scale.items() if len(d) > 1})}
    return out, views


def _distributions(sl: EvalSlates) -> tuple[dict, dict]:
    """One direction's score-distribution statistics and the raw values, per view and group."""
    groups = {"positive": sl.positive, "hard": sl.hard, "easy": sl.easy}
    sources = {"teacher logit": sl.teacher, "teacher probability": sl.teacher.sigmoid(), "student logit": sl.student}
    views = {v: {g: x[m].numpy() for g, m in groups.items()} for v, x in sources.items()}
    stats = {}
    for v, by_group in views.items():
        bounds = (0.0, 1.0) if "probability" in v else None
        stats[v] = {g: describe(vals, bounds=bounds) for g, vals in by_group.items()}
        stats[v]["all"] = describe(sources[v][sl.valid].numpy(), bounds=bounds)
    stats["per_query"] = {v: per_query_stats(x.numpy(), sl.valid.numpy()) for v, x in sources.items()}
    return stats, views


def finding2(slates: dict[str, EvalSlates], runs: Runs, table: list[Variant]) -> tuple[dict, dict]:
    """Agreement over the hard window and easy negatives; rank distillation over hard / easy / all negatives."""
    summaries, taus = {}, {}
    for d, sl in slates.items():
        args = (sl.teacher.numpy(), sl.student.numpy(), sl.relevance.numpy(), sl.hard.numpy(), sl.easy.numpy())
        summaries[d], taus[d] = agreement_summary(*args), agreement_taus(*args)
    rsum = rsum_stats(runs)
    ablation = {"none (itc)": rsum.get("itc"), "hard (student top-K)": rsum.get("listmle")}
    ablation |= {v.label: rsum.get(v.name) for v in _in_group(table, "negatives")}
    return {"agreement": summaries, "ablation_rsum": {k: v for k, v in ablation.items() if v}}, taus


def finding3(runs: Runs, histories: dict[str, list[list[dict]]], table: list[Variant]) -> dict:
    """Methods at matched weight, the λ sweep, and gradient coordination with ITC over training."""
    rsum = rsum_stats(runs)
    methods = {m: rsum[m] for m in ("itc", "kl", "ranknet", "listnet", "listmle", "cprd") if m in rsum}
    lambdas = {"cprd": 1.0} | {v.name: v.distill.weight for v in _in_group(table, "lambda")}
    sweep = {lam: rsum[name] for name, lam in lambdas.items() if name in rsum}
    return {"methods_rsum": methods, "lambda_sweep": dict(sorted(sweep.items())),
            "gradient_cosine": _cosine_series(histories)}


def _cosine_series(histories: dict[str, list[list[dict]]]) -> dict[str, dict]:
    """Each probed method's ``cos_<method>`` over training, from the seeds that tracked it."""
    cosine = {}
    for name, hs in histories.items():
        key = f"cos_{name}"
        rows = [r for h in hs if (r := [(row["step"], row[key]) for row in h if row.get(key) is not None])]
        if rows:  # the seeds that tracked coordination (profiles may probe only some)
            cosine[name] = {"steps": [s for s, _ in rows[0]], "values": [[v for _, v in r] for r in rows],
                            "mean": float(np.mean([v for r in rows for _, v in r]))}
    return cosine


def validity_analysis(slates: dict[str, EvalSlates], runs: Runs) -> dict:
    """For the headline's CPRD and every validity variant of the plan (trained in this profile or not): how many
    hard negatives its rule keeps and how relevant they are (ground truth), and the RSUM of CPRD trained with it."""
    rsum, out = rsum_stats(runs), {}
    rules = {"cprd": (METHODS["cprd"][0][1].params, METHODS["cprd"][1])}
    rules |= {f"cprd_{name}": rule for name, rule in VALIDITY.items()}
    for name, (cprd_params, label) in rules.items():
        params = {k: x for k, x in cprd_params.items() if k in ("validity", "threshold", "m")}
        per_dir = {}
        for d, sl in slates.items():
            key = torch.where(sl.hard, sl.teacher, torch.full_like(sl.teacher, float("-inf")))
            valid = valid_negatives(key, sl.hard, **params) & sl.hard
            kept, dropped = sl.relevance[valid], sl.relevance[sl.hard & ~valid]
            per_dir[d] = {"kept_per_query": float(valid.sum(1).float().mean()),
                          "relevance_kept": float(kept.mean()) if kept.numel() else None,
                          "relevance_dropped": float(dropped.mean()) if dropped.numel() else None}
        out[name] = {"label": label, "params": params, "slates": per_dir, "rsum": rsum.get(name)}
    return out


def reproduce(profile_name: str, out: Path, *, teacher_dir: str | Path | None = None, workers: int | None = None,
              groups: tuple[str, ...] | None = None, log=print, members: int | None = None,
              progress: bool = False, analyse_only: bool = False, seeds: int | None = None) -> dict[str, Any]:
    """Run the plan and the analyses; write ``out/report.md``, ``out/findings.json`` and the figures.

    ``members``: runs trained together as one batched model per worker (default: 32 on a GPU, 1 on a CPU; see
    :func:`~workbench.experiments.parallel.run_jobs`); ``progress``: a progress bar over every run's steps;
    ``analyse_only``: train nothing, analyse the runs already finished (e.g. after stopping a long profile);
    ``seeds``: seeds of every group instead of the profile's (seeds 0 .. seeds - 1; finished runs are kept, so a
    larger value adds seeds to a finished profile).
    """
    start = time.time()
    p = with_seeds(PROFILES[profile_name], seeds)
    ws = open_workspace(WORLD_PRESETS[p.world], teacher_dir or "auto", out / "teacher_scores.sqlite")
    groups = p.groups if groups is None else groups
    table = [v for v in variants(p) if groups is None or v.group in groups or v.group == "headline"]
    tuned = _tune(ws, p, out, table, workers, log, members, progress, analyse_only) if p.tune_lambdas else {}
    table = apply_choice(table, tuned)
    todo = planned = p.schedule(jobs(p, out / "runs", table))
    if analyse_only:
        results = {j.out_dir: m for j in todo if (m := finished(j)) is not None}
        todo = [j for j in todo if j.out_dir in results]
        if not any(j.variant == "itc" and j.seed == 0 for j in todo):
            raise ValueError(f"analyse_only needs at least the finished ITC run of seed 0 under {out / 'runs'}, "
                             "found none: run reproduce without it first")
        log(f"[reproduce] analysing the {len(todo)} finished runs only")
    else:
        results = _train_all(ws, p, todo, workers, log, members, progress)
    runs = by_variant(todo, results)
    histories = {v.name: [read_json(j.out_dir / "history.json") for j in todo if j.variant == v.name]
                 for v in _in_group(table, "headline") if v.probe}
    itc_job = next(j for j in todo if j.variant == "itc" and j.seed == 0)
    student = load_student(itc_job.out_dir / "checkpoint", device="cpu")
    log("[reproduce] evaluation slates and analyses")
    slates = {d: build_eval_slates(student, ws.teacher, ws.world.test, d) for d in ("i2t", "t2i")}
    f1, views = finding1(slates, runs, table)
    f2, taus = finding2(slates, runs, table)
    fair = fair_test(ws, todo, results, table, slates)
    f1["transfer"], f2["intervention"] = fair.pop("transfer"), fair.pop("intervention")
    findings = {
        "profile": profile_name, "seconds": None,
        "variants": {v.name: {"group": v.group, "label": v.label, "question": v.question} for v in table},
        "retrieval": retrieval_table(runs, "semantic") | _rerank(runs, "semantic"),
        "retrieval_coco": retrieval_table(runs, "coco") | _rerank(runs, "coco"),
        "finding1": f1, "finding2": f2, "finding3": finding3(runs, {k: v for k, v in histories.items() if v}, table),
        "validity": validity_analysis(slates, runs), "teacher": _teacher_metrics(ws), "tuning": tuned,
        "runs": {"planned": len(planned), "not_finished": [j.out_dir.name for j in planned
                                                            if results.get(j.out_dir) is None]},
    }
    findings["finding3"]["shared_slates"] = fair.pop("shared_slates")
    findings |= fair
    findings["verdicts"] = verdicts(findings)
    findings["headline"] = headline_verdict(findings)
    findings["seconds"] = time.time() - start
    figures = write_figures(ws, views, taus, findings, out)
    write_json(out / "findings.json", findings)
    from workbench.findings.report import render_report

    (out / "report.md").write_text(render_report(findings, p, figures))
    log(f"[reproduce] wrote {out / 'report.md'} in {findings['seconds'] / 60:.1f} min")
    return findings


def fair_test(ws: BuiltinWorkspace, done: list[Job], results: dict[Path, dict], table: list[Variant],
              slates: dict[str, EvalSlates]) -> dict[str, Any]:
    """The protocol's analyses (:mod:`workbench.experiments.protocol`): test RSUM paired by seed against ITC and
    against CPRD, each run's convergence, the room (when an oracle ran), Finding 1's transfer, Finding 2's order
    intervention and Finding 3 on shared slates."""
    rsums = {p: fair.per_seed(done, fair.test_rsum(results, p)) for p in ("semantic", "coco")}
    conv = fair.convergence(done)
    heads = [v.name for v in table if v.group in ("headline", "baselines")]
    vs_cprd = {p: fair.reference_minus({n: x for n, x in r.items() if n in heads and n != "itc"}, "cprd")
               for p, r in rsums.items()}
    return {"per_seed_rsum": rsums, "paired": {p: fair.paired_against(r, "itc") for p, r in rsums.items()},
            "paired_cprd": vs_cprd, "convergence": conv, "room": fair.room(rsums["semantic"]),
            "transfer": fair.transfer(rsums["semantic"], conv),
            "intervention": fair.intervention(rsums["semantic"], table, slates),
            "shared_slates": fair.shared_slates(ws, fair.seeds_of(done, "itc"),
                                                [v.name for v in table if v.group == "headline"])}


def _tune(ws: BuiltinWorkspace, p: ReproduceProfile, out: Path, table: list[Variant], workers: int | None, log,
          members: int | None, progress: bool, analyse_only: bool) -> dict[str, Any]:
    """Train (or, ``analyse_only``, read) the tuning grid of every tuned method on the tuning seed; return
    :func:`~workbench.experiments.tuning.grid_results` (validation only: the test split is not read)."""
    todo = jobs(p, out / "runs", grid_variants(p, table))
    if not analyse_only:
        log(f"[reproduce] tuning: {len(todo)} runs on seed {p.tune_seed}, chosen on validation")
        run_jobs(ws, todo, workers or p.workers, log=log, members=members, progress=progress)
    return grid_results(p, table, [j for j in todo if finished(j) is not None])


def _train_all(ws: BuiltinWorkspace, p: ReproduceProfile, todo: list[Job], workers: int | None,
               log, members: int | None = None, progress: bool = False) -> dict[Path, dict]:
    """Train the first ITC run, prefill the store from it (not needed with the dense teacher), then every other run
    in parallel workers (several runs per worker as one batched model on a GPU)."""
    itc_job = next(j for j in todo if j.variant == "itc" and j.seed == 0)
    results = run_jobs(ws, [itc_job], 1, log=log, members=1, progress=progress)
    if p.prefill and not ws.uses_dense_teacher("train"):
        fill_store(ws, load_student(itc_job.out_dir / "checkpoint"), "train", p.prefill,
                   positives=BASE["positives"], announce=log)
    ws.close()  # the workers open their own stores; this process only waits for them until the analyses
    release_host_memory()
    return results | run_jobs(ws, todo, workers or p.workers, log=log, members=members, progress=progress)


def _rerank(runs: Runs, protocol: str) -> dict:
    itc = runs.get("itc", [])
    if not itc or not all("rerank" in r for r in itc):
        return {}
    return {"teacher_rerank": {m: seed_stats([r["rerank"][protocol][m] for r in itc]) for m in METRICS}}


def _teacher_metrics(ws: BuiltinWorkspace) -> dict:
    minimal, graded = ws.eval_sets("test")
    return evaluate_teacher(ws.teacher, ws.world.test, minimal, graded)


def write_figures(ws: BuiltinWorkspace, views, taus, findings: dict, out: Path) -> dict[str, str]:
    """Save every figure of the report (PNG + SVG) into ``out/figures`` (closing each once saved); return
    ``{name: path relative to out}``."""
    folders = (out / "figures",)
    saved = {}

    def keep(name: str, fig) -> None:
        save_figure(fig, name, folders, close=True)
        saved[name] = f"figures/{name}.png"

    world_figure(ws.world.test, folders=folders)
    saved["world_examples"] = "figures/world_examples.png"
    keep("finding1_histograms", fp.score_histograms(views["i2t"]))
    keep("finding1_qq", fp.qq_plots(views["i2t"]))
    keep("finding2_tau", fp.tau_violins(taus["i2t"]))
    cos = findings["finding3"]["gradient_cosine"]
    if cos:
        series = {k: (v["steps"], np.array(v["values"])) for k, v in cos.items()}
        keep("finding3_gradient_cosine", fp.cosine_curves(series))
    sweep = findings["finding3"]["lambda_sweep"]
    if len(sweep) > 1:
        itc = findings["retrieval"].get("itc", {}).get("rsum")
        refs = {"ITC only": (itc["mean"], itc["std"] or 0.0)} if itc else None
        keep("finding3_lambda", fp.lambda_sweep(list(sweep), [v["mean"] for v in sweep.values()],
                                                [v["std"] or 0.0 for v in sweep.values()], references=refs))
    scale = findings["finding1"]["scale_check"]
    if any(len(v) > 1 for v in scale.values()):
        keep("finding1_scale_check", fp.scale_check({m: {v: (s["mean"], s["std"] or 0.0) for v, s in d.items()}
                                                     for m, d in scale.items()}))
    if findings.get("tuning"):
        keep("tuning_grid", fp.tuning_grid(findings["tuning"]))
    keep("headline_rsum", headline_figure(findings["retrieval"]))
    paired = findings["paired"]["semantic"]  # rows by variant name (the labels are sentences)
    if paired:
        keep("paired_vs_itc", fp.paired_differences(paired, title="each run − ITC, paired by seed (semantic)"))
    contrasts = findings["finding2"]["intervention"]["contrasts"]
    if contrasts:
        keep("finding2_intervention", fp.paired_differences(contrasts, title="Finding 2: which order helps where"))
    return saved


def demo_checkpoints(demo_dir: str | Path | None, names: Sequence[str] = ("itc", "kl", "cprd"), seed: int = 0
                     ) -> dict[str, Path]:
    """Checkpoint folders of the demo's finished headline runs: ``{name: demo_dir/runs/headline/<name>_seed<seed>/
    checkpoint}`` for each name whose run holds ``metrics.json`` and ``checkpoint/config.json`` (``{}`` when
    ``demo_dir`` is ``None`` or missing)."""
    if demo_dir is None:
        return {}
    found = {}
    for name in names:
        run = Path(demo_dir) / "runs" / "headline" / f"{name}_seed{seed}"
        if (run / "metrics.json").is_file() and (run / "checkpoint" / "config.json").is_file():
            found[name] = run / "checkpoint"
    return found
