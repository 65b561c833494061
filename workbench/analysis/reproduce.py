"""``python -m workbench reproduce``: the paper's three findings on the built-in world, from real runs.

Trains every run of the plan (:mod:`workbench.analysis.plan`, in parallel workers, resuming finished runs), then
analyses them: Finding 1 (score distributions, logit vs ranking KD, the scale check), Finding 2 (teacher/student/
truth agreement over hard and easy negatives, the hard/easy/all ablation), Finding 3 (methods at matched weight,
the λ sweep, gradient coordination), the validity rules, and the headline table. Writes ``report.md``,
``findings.json`` and figures (PNG + SVG, also copied to ``figures/``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from workbench.analysis import finding_plots as fp
from workbench.analysis.agreement import agreement_summary, agreement_taus
from workbench.analysis.distributions import describe, per_query_stats, scale_spread
from workbench.analysis.parallel import Job, run_jobs
from workbench.analysis.plan import BASE, PROFILES, plan
from workbench.analysis.plots import FIGURES, save_figure
from workbench.analysis.report import world_figure
from workbench.analysis.runs import WORLD_PRESETS, open_workspace, prefill_store
from workbench.analysis.slates_eval import EvalSlates, build_eval_slates
from workbench.analysis.verdicts import headline_verdict, verdicts
from workbench.device import release_host_memory
from workbench.io import read_json, write_json
from workbench.training.checkpoint import load_student

METRICS = ("r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum")


def mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": int(len(a))}


def seed_rsums(runs: dict[str, list[dict]]) -> dict[str, list[float]]:
    """Semantic test RSUM of each run name, one value per seed."""
    return {name: [r["retrieval"]["semantic"]["rsum"] for r in rs] for name, rs in runs.items()}


def rsum_stats(runs: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """:func:`mean_std` of each run name's semantic test RSUM over seeds."""
    return {name: mean_std(xs) for name, xs in seed_rsums(runs).items()}


def by_name(jobs: list[Job], results: dict[Path, dict]) -> dict[str, list[dict]]:
    """Group run metrics by run name (folder name without the ``_seedN`` suffix)."""
    out: dict[str, list[dict]] = {}
    for job in jobs:
        out.setdefault(job.out_dir.name.rsplit("_seed", 1)[0], []).append(results[job.out_dir])
    return out


def retrieval_table(runs: dict[str, list[dict]], protocol: str, section: str = "retrieval") -> dict[str, dict]:
    """``{name: {metric: {mean, std, n}}}`` over seeds."""
    return {name: {m: mean_std([r[section][protocol][m] for r in rs]) for m in METRICS}
            for name, rs in runs.items() if all(section in r for r in rs)}


def finding1(slates: dict[str, EvalSlates], runs: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Score distributions per group and view, per-query softmax shape, logit-vs-ranking KD, the scale check."""
    stats, views = {}, {}
    for d, sl in slates.items():
        groups = {"positive": sl.positive, "hard": sl.hard, "easy": sl.easy}
        sources = {"teacher logit": sl.teacher, "teacher probability": sl.teacher.sigmoid(),
                   "student logit": sl.student}
        views[d] = {v: {g: x[m].numpy() for g, m in groups.items()} for v, x in sources.items()}
        stats[d] = {}
        for v, by_group in views[d].items():
            bounds = (0.0, 1.0) if "probability" in v else None
            stats[d][v] = {g: describe(vals, bounds=bounds) for g, vals in by_group.items()}
            stats[d][v]["all"] = describe(sources[v][sl.valid].numpy(), bounds=bounds)
        stats[d]["per_query"] = {v: per_query_stats(x.numpy(), sl.valid.numpy()) for v, x in sources.items()}
    rsum = seed_rsums(runs)
    scale = {m: {"logit": rsum.get(m, [])} | {v: rsum.get(f"{m}_{v}", []) for v in ("probability", "tempered")}
             for m in ("kl", "listmle", "cprd")}
    scale = {m: {v: xs for v, xs in d.items() if xs} for m, d in scale.items()}
    out = {"distributions": stats, "kd_rsum": {m: mean_std(rsum[m]) for m in ("itc", "kl", "mse", "listmle", "cprd")
                                               if m in rsum},
           "scale_check": {m: {v: mean_std(xs) for v, xs in d.items()} for m, d in scale.items()},
           "scale_spread": scale_spread({m: d for m, d in scale.items() if len(d) > 1})}
    return out, views


def finding2(slates: dict[str, EvalSlates], runs: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Agreement over the hard window and easy negatives; rank distillation over hard / easy / all negatives."""
    summaries, taus = {}, {}
    for d, sl in slates.items():
        args = (sl.teacher.numpy(), sl.student.numpy(), sl.relevance.numpy(), sl.hard.numpy(), sl.easy.numpy())
        summaries[d], taus[d] = agreement_summary(*args), agreement_taus(*args)
    rsum = rsum_stats(runs)
    ablation = {"none (itc)": rsum.get("itc"), "hard (student top-K)": rsum.get("listmle"),
                "easy (beyond rank R)": rsum.get("listmle_easy"), "all (whole batch)": rsum.get("listmle_all"),
                "hard + easy (K of each)": rsum.get("listmle_hard_easy")}
    return {"agreement": summaries, "ablation_rsum": {k: v for k, v in ablation.items() if v}}, taus


def finding3(runs: dict[str, list[dict]], histories: dict[str, list[list[dict]]], lambdas: dict[str, float]) -> dict:
    """Methods at matched weight, the λ sweep, and gradient coordination with ITC over training."""
    rsum = rsum_stats(runs)
    methods = {m: rsum[m] for m in ("itc", "kl", "ranknet", "listnet", "listmle", "cprd") if m in rsum}
    sweep = {lam: rsum[name] for name, lam in lambdas.items() if name in rsum}
    cosine = {}
    for name, hs in histories.items():
        key = f"cos_{name}"
        rows = [r for h in hs if (r := [(row["step"], row[key]) for row in h if row.get(key) is not None])]
        if rows:  # the seeds that tracked coordination (profiles may probe only some)
            cosine[name] = {"steps": [s for s, _ in rows[0]], "values": [[v for _, v in r] for r in rows],
                            "mean": float(np.mean([v for r in rows for _, v in r]))}
    return {"methods_rsum": methods, "lambda_sweep": dict(sorted(sweep.items())), "gradient_cosine": cosine}


def validity_analysis(slates: dict[str, EvalSlates], runs: dict[str, list[dict]]) -> dict:
    """For each validity rule: how many hard negatives it keeps and how relevant they are (ground truth), and the
    RSUM of CPRD trained with it."""
    from workbench.losses.cprd import VALIDITY_RULES

    rules = {"top1": ("top", {"m": 1}), "top2": ("top", {"m": 2}), "top4": ("top", {"m": 4}), "all": ("all", {}),
             "threshold0": ("threshold", {"threshold": 0.0}), "threshold-4": ("threshold", {"threshold": -4.0})}
    rsum, out = rsum_stats(runs), {}
    for name, (rule, params) in rules.items():
        per_dir = {}
        for d, sl in slates.items():
            valid = _valid_mask(VALIDITY_RULES[rule], sl, params)
            kept, dropped = sl.relevance[valid], sl.relevance[sl.hard & ~valid]
            per_dir[d] = {"kept_per_query": float(valid.sum(1).float().mean()),
                          "relevance_kept": float(kept.mean()) if kept.numel() else None,
                          "relevance_dropped": float(dropped.mean()) if dropped.numel() else None}
        out[name] = {"slates": per_dir, "rsum": rsum.get({"top4": "cprd"}.get(name, f"cprd_{name}"))}
    return out


def _valid_mask(rule_fn, sl: EvalSlates, params: dict):
    """The rule's valid hard negatives on an evaluation slate (hard window only, as in training)."""
    import torch

    key = torch.where(sl.hard, sl.teacher, torch.full_like(sl.teacher, float("-inf")))
    kwargs = {"threshold": 0.5, "m": 4} | params
    return rule_fn(key, sl.hard, **kwargs) & sl.hard


def reproduce(profile_name: str, out: Path, *, teacher_dir: str | Path | None = None, workers: int | None = None,
              groups: tuple[str, ...] | None = None, log=print) -> dict[str, Any]:
    """Run the plan and the analyses; write ``out/report.md``, ``out/findings.json`` and the figures."""
    from workbench.analysis.runs import DEFAULT_TEACHER

    start = time.time()
    p = PROFILES[profile_name]
    ws = open_workspace(WORLD_PRESETS[p.world], teacher_dir or DEFAULT_TEACHER, out / "teacher_scores.sqlite")
    jobs_by_group = {k: v for k, v in plan(p, out / "runs").items() if groups is None or k in groups or k == "headline"}
    jobs = [j for js in jobs_by_group.values() for j in js]
    itc_job = next(j for j in jobs if j.out_dir.name == "itc_seed0")
    results = run_jobs(ws, [itc_job], 1, log=log)
    if p.prefill:
        prefill_store(ws, load_student(itc_job.out_dir / "checkpoint"), "train", p.prefill, BASE["positives"], log)
    ws.close()  # the workers open their own stores; this process only waits for them until the analyses
    release_host_memory()
    results |= run_jobs(ws, jobs, workers or p.workers, log=log)
    runs = by_name(jobs, results)
    histories = {name: [read_json(j.out_dir / "history.json") for j in jobs_by_group.get("headline", [])
                        if j.out_dir.name.startswith(name + "_seed")]
                 for name in ("kl", "mse", "ranknet", "listnet", "listmle", "cprd")}
    student = load_student(itc_job.out_dir / "checkpoint", device="cpu")
    log("[reproduce] evaluation slates and analyses")
    slates = {d: build_eval_slates(student, ws.teacher, ws.world.test, d) for d in ("i2t", "t2i")}
    f1, views = finding1(slates, runs)
    f2, taus = finding2(slates, runs)
    lambdas = {"cprd": 1.0} | {f"cprd_lambda{lam:g}": lam for lam in p.lambdas}
    f3 = finding3(runs, {k: v for k, v in histories.items() if v}, lambdas)
    findings = {
        "profile": profile_name, "seconds": None,
        "retrieval": retrieval_table(runs, "semantic") | _rerank(runs, "semantic"),
        "retrieval_coco": retrieval_table(runs, "coco") | _rerank(runs, "coco"),
        "finding1": f1, "finding2": f2, "finding3": f3, "validity": validity_analysis(slates, runs),
        "teacher": _teacher_metrics(ws),
    }
    findings["verdicts"] = verdicts(findings)
    findings["headline"] = headline_verdict(findings)
    findings["seconds"] = time.time() - start
    figures = write_figures(ws, views, taus, findings, out, copy=profile_name != "smoke")
    write_json(out / "findings.json", findings)
    from workbench.analysis.report_md import render_report

    (out / "report.md").write_text(render_report(findings, p, figures, runs))
    log(f"[reproduce] wrote {out / 'report.md'} in {findings['seconds'] / 60:.1f} min")
    return findings


def _rerank(runs: dict[str, list[dict]], protocol: str) -> dict:
    itc = runs.get("itc", [])
    if not itc or not all("rerank" in r for r in itc):
        return {}
    return {"teacher_rerank": {m: mean_std([r["rerank"][protocol][m] for r in itc]) for m in METRICS}}


def _teacher_metrics(ws) -> dict:
    from workbench.analysis.evaluate import evaluate_teacher

    minimal, graded = ws.eval_sets("test")
    return evaluate_teacher(ws.teacher, ws.world.test, minimal, graded)


def write_figures(ws, views, taus, findings: dict, out: Path, copy: bool = True) -> dict[str, str]:
    """Save every figure of the report (PNG + SVG) into ``out/figures`` (and ``figures/`` when ``copy``)."""
    folders = (out / "figures", FIGURES) if copy else (out / "figures",)
    saved = {}

    def keep(name: str, fig) -> None:
        save_figure(fig, name, folders)
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
        refs = {"ITC only": (itc["mean"], itc["std"])} if itc else None
        keep("finding3_lambda", fp.lambda_sweep(list(sweep), [v["mean"] for v in sweep.values()],
                                                [v["std"] for v in sweep.values()], references=refs))
    scale = findings["finding1"]["scale_check"]
    if any(len(v) > 1 for v in scale.values()):
        keep("finding1_scale_check", fp.scale_check({m: {v: (s["mean"], s["std"]) for v, s in d.items()}
                                                     for m, d in scale.items()}))
    from workbench.analysis.report import headline_figure

    keep("headline_rsum", headline_figure(findings["retrieval"]))
    return saved
