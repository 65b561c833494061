"""Train-step cost of distillation with a warm teacher-score store, measured side by side in one run.

(a) ITC + CPRD step time with a warm store / ITC alone (target <= 1.15) — per mining pool;
(b) teacher forwards of a second pass over the same batches / the first, and the store's hit rate on it (>= 99%).

The store is warmed by a first run with the same seed: with the same batches, the same mined negatives are asked for
again, so every teacher score of the timed run is a hit. Each configuration is timed over the same steps after a
warm-up; the ratio is of medians of interleaved repeats.

    python benchmarks/train_step.py [--steps 60] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from workbench.data.world import WorldConfig
from workbench.experiments import open_workspace
from workbench.training.config import LossTerm, profile
from workbench.training.loop import fit


def timed_fit(ws, cfg, teacher_scores) -> float:
    torch.manual_seed(cfg.seed)  # the same initial student every pass (as train_run does)
    student = ws.new_student()
    start = time.perf_counter()
    fit(cfg, ws.world, student, teacher_scores=teacher_scores)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ws = open_workspace(WorldConfig(), store_path=Path(tmp) / "store.sqlite", device=args.device)
        base = profile("quick", steps=args.steps, eval_every=10**6, device=args.device, positives="coco")
        itc = base
        for pool in ("batch", "gallery"):
            cprd = replace(base, pool=pool, refresh_every=10**6,
                           losses=(LossTerm("itc"), LossTerm("cprd", 1.0, {"validity": "top", "m": 4})))
            scores = ws.teacher_scores()
            start = scores.stats
            timed_fit(ws, cprd, scores)  # first pass: fills the store
            first = scores.stats - start
            times = {"itc": [], "cprd": []}
            for _ in range(args.repeats):
                times["itc"].append(timed_fit(ws, replace(itc, pool=pool), None))
                before = scores.stats
                times["cprd"].append(timed_fit(ws, cprd, scores))
                second = scores.stats - before
            ratio = statistics.median(times["cprd"]) / statistics.median(times["itc"])
            print(f"[{pool}] step time ITC {1000 * statistics.median(times['itc']) / args.steps:.1f} ms, "
                  f"ITC+CPRD (warm store) {1000 * statistics.median(times['cprd']) / args.steps:.1f} ms, "
                  f"ratio {ratio:.2f} (target <= 1.15: {'PASS' if ratio <= 1.15 else 'FAIL'})")
            print(f"[{pool}] teacher forwards: first pass {first.computed_pairs}, repeated pass "
                  f"{second.computed_pairs} (ratio {second.computed_pairs / max(1, first.computed_pairs):.3f}); "
                  f"hit rate of the repeated pass {100 * second.hit_rate:.2f}% (target >= 99%)")


if __name__ == "__main__":
    main()
