"""The validation-split tuning grid of ``docs/protocol.md`` § 3 for some methods only: what the cpu profile skipped.

The cpu profile ran every method at λ = 1 on the teacher's logits, and Finding 1's contrast (ListMLE − KL) came out
large at that point. A reviewer asks whether KL was merely badly tuned. This trains, on the tuning seed (100, never
a test seed), the grid points of the chosen methods exactly as ``reproduce`` would (same variants, configs, run
names, :mod:`workbench.experiments.tuning`), plus ITC on the same seed as the reference, and writes each point's
final *validation* semantic RSUM and the chosen point. The test split is not read.

    PYTHONPATH=. python research/fair/tuning_grid.py --methods kl,listmle --lambdas 0.25,1 \
        --out runs/tuning_cpu --json benchmarks/results/fair_cpu/tuning/grid.json --workers 2
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from workbench.experiments.parallel import finished, run_jobs  # noqa: E402
from workbench.experiments.plan import PROFILES, jobs, variants, with_seeds  # noqa: E402
from workbench.experiments.protocol import LOGIT, convergence, paired_against, reference_minus  # noqa: E402
from workbench.experiments.tuning import (  # noqa: E402
    apply_choice,
    final_val_rsum,
    grid_results,
    grid_variants,
    tuned_methods,
    val_rows,
)
from workbench.experiments.workspace import WORLD_PRESETS, open_workspace  # noqa: E402
from workbench.findings.figures import learning_curves, tuning_grid  # noqa: E402
from workbench.findings.plots import save_figure  # noqa: E402
from workbench.findings.report import tuning_md  # noqa: E402
from workbench.findings.verdicts import finding1_verdict, headline_verdict  # noqa: E402
from workbench.io import read_json, write_json  # noqa: E402

MARGIN = 6.5
"""RSUM: twice the noise of a difference of two single runs (docs/protocol.md, fourth amendment)."""


def plan_grid(profile: str, methods: list[str], lambdas: tuple[float, ...], out: Path, seeds: int | None = None):
    """``(profile, tuned table, grid jobs, ITC's reference job)``: the grid of ``methods`` under ``profile`` with
    ``lambdas`` (the profile's views), on the profile's tuning seed; ``seeds``: test seeds of the confirm runs
    (default: the profile's)."""
    p = with_seeds(replace(PROFILES[profile], tune_lambdas=lambdas), seeds)
    table = [v for v in variants(p) if v.name in methods or v.name == "itc"]
    unknown = sorted(set(methods) - {v.name for v in tuned_methods(table)})
    if unknown:
        raise ValueError(f"--methods must name headline/baseline methods with a distillation term in profile "
                         f"{profile!r}, got unknown {unknown}")
    itc = next(v for v in table if v.name == "itc")
    reference = jobs(p, out / "runs", [replace(itc, name="itc__reference", group="tuning", seeds="tune",
                                               rerank=False, probe=False)])
    return p, table, jobs(p, out / "runs", grid_variants(p, table)), reference


def reading(results: dict, ranking: str = "listmle", logit: str = "kl", margin: float = MARGIN) -> dict:
    """The pre-registered reading of the grid: ``ranking``'s chosen point minus ``logit``'s (validation RSUM) is
    *robust to the grid* above ``margin``, *reversed* below ``-margin``, else *not robust*; each chosen point's
    λ at the grid's smallest value is flagged as at the edge."""
    if ranking not in results or logit not in results:
        return {"verdict": "untestable", "reason": f"the grid of {ranking!r} or {logit!r} did not finish"}
    best = {m: results[m]["chosen"] for m in (ranking, logit)}
    diff = best[ranking]["val_rsum"] - best[logit]["val_rsum"]
    verdict = "robust to the grid" if diff > margin else "reversed" if diff < -margin else "not robust"
    smallest = {m: min(q["lambda"] for q in results[m]["grid"]) for m in best}
    return {"verdict": verdict, "difference": diff, "margin": margin, "chosen": best,
            "at_edge": sorted(m for m in best if best[m]["lambda"] == smallest[m])}


def summarise(table: list, grid: list, reference: list, p) -> tuple[dict, list]:
    """``(summary, finished jobs)``: every point, the choice, ITC's reference, convergence flags, the reading."""
    done = [j for j in reference + grid if finished(j) is not None]
    results = grid_results(p, table, done)
    itc = final_val_rsum(reference[0].out_dir) if reference[0] in done else None
    return {"profile": p.name, "steps": p.steps, "seed": p.tune_seed, "lambdas": list(p.tune_lambdas),
            "views": list(p.tune_views), "itc_val_rsum": itc, "methods": results, "convergence": convergence(done),
            "reading": reading(results)}, done


def write_report(summary: dict, done: list, json_path: Path) -> None:
    """``json_path`` (the summary), and beside it ``grid.md``, ``grid_points.png`` (each point's final value) and
    ``grid_curves.png`` (every finished run's validation curve)."""
    write_json(json_path, summary)
    curves = {j.variant: {j.seed: ([r["step"] for r in rows], [r["val_semantic_rsum"] for r in rows])}
              for j in done for rows in [val_rows(j.out_dir)]}
    save_figure(learning_curves(curves, metric=f"validation RSUM (semantic), seed {summary['seed']}"),
                "grid_curves", [json_path.parent], close=True)
    if summary["methods"]:
        save_figure(tuning_grid(summary["methods"], summary["itc_val_rsum"],
                                title=f"validation grid, seed {summary['seed']} (dashed: ITC alone)"),
                    "grid_points", [json_path.parent], close=True)
    json_path.with_name("grid.md").write_text(_markdown(summary))


def _markdown(s: dict) -> str:
    r = s["reading"]
    rising = sorted(n for n, c in s["convergence"].items() if c["still_rising_seeds"])
    lines = [f"# Validation grid, seed {s['seed']}, {s['steps']} steps ({s['profile']} profile)", "",
             tuning_md(s["methods"], {}, used="is the method's best point on this grid"), "",
             f"ITC alone on the same seed: validation RSUM {s['itc_val_rsum']:.1f}.",
             "", f"Runs whose validation RSUM still rose > 1 % over their last three evaluations: "
             f"{', '.join(rising) or 'none'}.", "",
             f"Pre-registered reading (docs/protocol.md, fourth amendment): **{r['verdict']}**"]
    if "difference" in r:
        lines[-1] += (f": ListMLE's chosen point − KL's = {r['difference']:+.1f} validation RSUM (margin ± "
                      f"{r['margin']:g}); chosen at the grid's smallest λ: {', '.join(r['at_edge']) or 'none'}.")
    lines += _test_lines(s.get("test", {}))
    return "\n".join(lines) + "\n\n![grid](grid_points.png)\n\n![curves](grid_curves.png)\n"


def _ci(d: dict) -> str:
    return f"{d['mean']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"


def _test_lines(test: dict) -> list[str]:
    """The confirm runs: test RSUM per seed, minus ITC and minus its untuned self, and Finding 1's verdict."""
    lines = []
    for name, t in test.items():
        seeds = ", ".join(f"{t['rsum'][k]:.1f}" for k in sorted(t["rsum"], key=int))
        lines += ["", f"## {name} at its chosen point on the test seeds ({t['label']})", "",
                  f"Test semantic RSUM per seed: {seeds}. Paired by seed (95 % t CI) against `{t['reference']}`: "
                  f"{name} − ITC {_ci(t['minus']['itc'])}; {name} − itself at λ = 1 on logits "
                  f"{_ci(t['minus'][name])}."]
        if "headline" in t:
            h = t["headline"]
            beats = ", ".join(f"{b}: {v}" for b, v in h["beats_baselines"].items())
            room = "" if h["room_share"] is None else f"; share of the room {h['room_share']:.2f}"
            lines += ["", "Headline rule on the tuned CPRD (`workbench.findings.verdicts.headline_verdict`): beats "
                      f"ITC: {h['beats_itc']}; beats {beats}{room}; the paper's goal met: **{h['goal_met']}**."]
        if "finding1" in t:
            lines += ["", f"Finding 1 at the chosen points (ListMLE at λ = 1, its committed runs, − {name}), by "
                      f"`workbench.findings.verdicts.finding1_verdict` on the reference's distributions: "
                      f"**{t['finding1']['verdict']}** ({t['finding1']['reason']})."]
    return lines


def confirm_jobs(p, table: list, results: dict, methods: list[str], out: Path) -> list:
    """The test-seed runs of each of ``methods`` at its chosen grid point (the profile's headline seeds), as
    ``reproduce`` would train them after tuning: folders ``out/runs/final/<group>/<method>_seed<s>``."""
    tuned = [v for v in apply_choice(table, results) if v.name in methods]
    return jobs(p, out / "runs" / "final", [replace(v, rerank=False, probe=False) for v in tuned])


def confirm_report(done: list, reference_findings: Path) -> dict:
    """Test semantic RSUM per seed of the confirm runs ``done``, each paired by seed with every method of
    ``reference_findings`` (a reproduce run's findings.json: its ``per_seed_rsum``) it shares >= 2 seeds with, and
    Finding 1's verdict (docs/protocol.md § 5) on ListMLE − the tuned run, by the workbench's own rule."""
    findings = read_json(reference_findings)
    ref = {m: {int(k): v for k, v in seeds.items()} for m, seeds in findings["per_seed_rsum"]["semantic"].items()}
    out = {}
    for name in sorted({j.variant for j in done}):
        tuned = f"{name} (tuned)"
        values = {**ref, tuned: {j.seed: read_json(j.out_dir / "metrics.json")["retrieval"]["semantic"]["rsum"]
                                 for j in done if j.variant == name}}
        cfg = next(j.cfg for j in done if j.variant == name)
        vs = paired_against(values, tuned)  # every reference method − the tuned run
        out[name] = {"label": f"{cfg.losses[-1].spell()}, teacher {cfg.teacher_output} (T = "
                              f"{cfg.teacher_temperature:g})",
                     "rsum": values[tuned], "reference": str(reference_findings),
                     "minus": reference_minus(values, tuned), "reference_minus": vs}
        if "listmle" in vs and name in LOGIT:  # Finding 1 (b) contrasts the ranking method with a logit one
            transfer = {"ranking": "listmle", "logit": tuned, "difference": vs["listmle"]}
            out[name]["finding1"] = finding1_verdict({"finding1": {**findings["finding1"], "transfer": transfer}})
        if name == "cprd":
            out[name]["headline"] = tuned_headline(findings, out[name]["minus"])
    return out


def tuned_headline(findings: dict, minus: dict) -> dict:
    """The headline rule (docs/protocol.md § 5, ``verdicts.headline_verdict``) with the tuned CPRD in place of the
    reference's: ``minus`` = the tuned CPRD − each reference method, paired by seed; the same baselines as the
    reference's own headline, and its re-ranking gap and room."""
    baselines = {b: minus[b] for b in findings.get("paired_cprd", {}).get("semantic", {}) if b in minus}
    return headline_verdict({"paired": {"semantic": {"cprd": minus["itc"]}},
                             "paired_cprd": {"semantic": baselines},
                             "retrieval": findings["retrieval"], "room": findings.get("room")})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--methods", required=True, help="comma-separated method names (e.g. kl,listmle)")
    ap.add_argument("--lambdas", required=True, help="comma-separated λ values of the grid")
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs and the teacher-score store")
    ap.add_argument("--json", type=Path, required=True, help="where the grid's results go")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    ap.add_argument("--confirm", default="", help="comma-separated methods to train at their chosen point on the "
                    "profile's test seeds, then pair with --reference's per-seed test RSUM")
    ap.add_argument("--seeds", type=int, default=None, help="test seeds of the confirm runs (default: the "
                    "profile's); finished runs are kept")
    ap.add_argument("--reference", type=Path, default=Path("benchmarks/results/fair_cpu/findings.json"),
                    help="findings.json of the untuned runs the confirm runs are paired with")
    args = ap.parse_args(argv)
    lambdas = tuple(float(x) for x in args.lambdas.split(","))
    p, table, grid, reference = plan_grid(args.profile, args.methods.split(","), lambdas, args.out, args.seeds)
    ws = open_workspace(WORLD_PRESETS[p.world], "auto", args.out / "teacher_scores.sqlite")
    print(f"[tuning] {len(grid)} grid runs + ITC on seed {p.tune_seed}, {p.steps} steps each")
    if not args.report_only:
        run_jobs(ws, reference + grid, args.workers, progress=True)
    summary, done = summarise(table, grid, reference, p)
    if args.confirm:
        todo = confirm_jobs(p, table, summary["methods"], args.confirm.split(","), args.out)
        if not args.report_only:
            run_jobs(ws, todo, args.workers, progress=True)
        summary["test"] = confirm_report([j for j in todo if finished(j) is not None], args.reference)
    write_report(summary, done, args.json)
    print(_markdown(summary))


if __name__ == "__main__":
    main()
