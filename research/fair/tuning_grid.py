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
from workbench.experiments.plan import PROFILES, jobs, variants  # noqa: E402
from workbench.experiments.tuning import final_val_rsum, grid_results, grid_variants, tuned_methods  # noqa: E402
from workbench.experiments.workspace import WORLD_PRESETS, open_workspace  # noqa: E402
from workbench.io import write_json  # noqa: E402


def plan_grid(profile: str, methods: list[str], lambdas: tuple[float, ...], out: Path):
    """``(profile, tuned table, grid jobs, ITC's reference job)``: the grid of ``methods`` under ``profile`` with
    ``lambdas`` (the profile's views), on the profile's tuning seed."""
    p = replace(PROFILES[profile], tune_lambdas=lambdas)
    table = [v for v in variants(p) if v.name in methods or v.name == "itc"]
    unknown = sorted(set(methods) - {v.name for v in tuned_methods(table)})
    if unknown:
        raise ValueError(f"--methods must name headline/baseline methods with a distillation term in profile "
                         f"{profile!r}, got unknown {unknown}")
    itc = next(v for v in table if v.name == "itc")
    reference = jobs(p, out / "runs", [replace(itc, name="itc__reference", group="tuning", seeds="tune",
                                               rerank=False, probe=False)])
    return p, table, jobs(p, out / "runs", grid_variants(p, table)), reference


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--methods", required=True, help="comma-separated method names (e.g. kl,listmle)")
    ap.add_argument("--lambdas", required=True, help="comma-separated λ values of the grid")
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs and the teacher-score store")
    ap.add_argument("--json", type=Path, required=True, help="where the grid's results go")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    lambdas = tuple(float(x) for x in args.lambdas.split(","))
    p, table, grid, reference = plan_grid(args.profile, args.methods.split(","), lambdas, args.out)
    ws = open_workspace(WORLD_PRESETS[p.world], "auto", args.out / "teacher_scores.sqlite")
    print(f"[tuning] {len(grid)} grid runs + ITC on seed {p.tune_seed}, {p.steps} steps each")
    run_jobs(ws, reference + grid, args.workers, progress=True)
    results = grid_results(p, table, [j for j in grid if finished(j) is not None])
    itc = final_val_rsum(reference[0].out_dir) if finished(reference[0]) is not None else None
    write_json(args.json, {"profile": p.name, "steps": p.steps, "seed": p.tune_seed, "lambdas": list(lambdas),
                           "views": list(p.tune_views), "itc_val_rsum": itc, "methods": results})
    for name, r in results.items():
        for q in r["grid"]:
            print(f"{name:10s} λ={q['lambda']:<5g} {q['view']:9s} val RSUM {q['val_rsum']}")
        print(f"{name:10s} chosen: λ={r['chosen']['lambda']:g} {r['chosen']['view']}")
    print(f"itc        val RSUM {itc}")


if __name__ == "__main__":
    main()
