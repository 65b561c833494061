"""Train some of a reproduce profile's headline runs in parallel, without the store prefill (GPU follow-up).

The second GPU call of the session that measured `benchmarks/gpu_check.sh`: that call's 420 s finished the
ITC, KL, MSE and two RankNet runs of `reproduce --profile full`; this trains the rest of the headline methods
with the same configs (the plan's), one worker process per run, and prints each run's RSUM and train time.

    OMP_NUM_THREADS=1 python3 benchmarks/gpu_headline.py --methods listnet,listmle,cprd --out /tmp/gpu/headline
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from workbench.experiments import DEFAULT_TEACHER, WORLD_PRESETS, open_workspace
from workbench.experiments.parallel import run_jobs
from workbench.experiments.plan import PROFILES, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full", choices=list(PROFILES))
    ap.add_argument("--methods", default="listnet,listmle,cprd", help="comma-separated headline methods")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=None, help="default: one per run")
    args = ap.parse_args()
    p = PROFILES[args.profile]
    methods = args.methods.split(",")
    jobs = [j for j in plan(p, args.out / "runs")["headline"] if j.out_dir.name.rsplit("_seed", 1)[0] in methods]
    ws = open_workspace(WORLD_PRESETS[p.world], DEFAULT_TEACHER, args.out / "teacher_scores.sqlite")
    start = time.time()
    results = run_jobs(ws, jobs, args.workers or len(jobs))
    for out_dir, m in sorted(results.items()):
        print(f"{out_dir.name}: RSUM {m['rsum']:.2f}  minimal pairs {m['minimal_pairs']['mean']:.1f}  "
              f"train {m['train_seconds']:.0f} s")
    print(f"{len(results)} runs in {time.time() - start:.0f} s wall")


if __name__ == "__main__":
    main()
