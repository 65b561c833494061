"""The room on the default world, through the workbench itself: ITC alone vs the oracle, several seeds, at the
step count the learning curves reach their plateau; the room in RSUM, in flipped relations, and as a fraction of the
ITC -> teacher gap; the false-negative rate of each student's gallery-mined top-8 slates.

    PYTHONPATH=. python research/room/room_runs.py train --arm itc --seeds 0 1 2 --steps 4000 --out runs/room_v2
    PYTHONPATH=. python research/room/room_runs.py train --arm oracle --seeds 0 --steps 3000 --out runs/room_v2
    PYTHONPATH=. python research/room/room_runs.py report --out runs/room_v2 \
        --json benchmarks/results/room/room.json --figures benchmarks/results/room

Arms (decided before the runs; the student is the workspace's default, ``moments-v1``, on the teacher's stem):

- ``itc``: ITC alone, own-caption ("coco") positives: the student's own contrastive signal, as every distillation run
  trains it;
- ``oracle``: the same student with privileged signal: every near-miss kind of each caption (relation flips
  included) as extra negatives, whole contrast groups per batch, semantic positives (no false negatives).
- ``near_misses`` (added later, exploratory): the oracle's near-misses only (every kind of each caption as extra
  negatives), with own-caption positives and random batches, as ITC and every distillation run has them.

The teacher's level is its re-ranking of the ITC student's top-k (``rerank`` in metrics.json), the workbench's
teacher number. Per-seed values are kept; means carry 95 % t-intervals (``workbench.findings.stats``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from research.room.common import false_negative_rate  # noqa: E402
from workbench.evaluation.embed import embed_split  # noqa: E402
from workbench.experiments import RunSpec, load_run, open_workspace, train_run, train_runs_batched  # noqa: E402
from workbench.findings.figures import learning_curves  # noqa: E402
from workbench.findings.plots import save_figure  # noqa: E402
from workbench.findings.stats import paired_difference, seed_stats  # noqa: E402
from workbench.io import write_json  # noqa: E402
from workbench.training.checkpoint import load_student  # noqa: E402
from workbench.training.config import LossTerm, profile  # noqa: E402

ARMS = {
    "itc": {"positives": "coco"},
    "oracle": {"positives": "semantic", "near_misses": True, "near_miss_count": 0, "group_batches": True},
    # added 2026-12-07 (docs/protocol.md, eleventh note): one part of the oracle alone
    "near_misses": {"positives": "coco", "near_misses": True, "near_miss_count": 0},
}


def arm_config(arm: str, seed: int, steps: int, eval_every: int):
    """The FitConfig of one arm (ITC loss, batch 128, lr 2e-3, warm-up 5 % of the steps)."""
    base = profile("quick", steps=steps, warmup=max(steps // 20, 1), eval_every=eval_every, seed=seed,
                   losses=(LossTerm("itc"),))
    return replace(base, lr=2e-3, **ARMS[arm])


def train(args) -> None:
    torch.set_num_threads(1)
    ws = open_workspace(store_path=args.out / "teacher_scores.sqlite")
    specs = [RunSpec(arm_config(args.arm, s, args.steps, args.eval_every), args.out / f"{args.arm}_s{s}",
                     rerank=args.arm == "itc", name=f"{args.arm}_s{s}") for s in args.seeds]
    if len(specs) == 1 or not args.batched:
        for spec in specs:
            train_run(ws, spec.cfg, spec.out_dir, rerank=spec.rerank, overwrite=True)
    else:
        train_runs_batched(ws, specs, log=print, overwrite=True)


def run_values(ws, run: Path) -> dict:
    """Test metrics of one run folder and the FN rate of its student's gallery-mined top-8 training slates."""
    r = load_run(run)
    test = r["metrics"]
    student = load_student(run / "checkpoint", device="cpu")
    img, txt = embed_split(student, ws.world.train)
    rerank = test.get("rerank") or {}
    return {"seed": r["config"]["fit"]["seed"], "rsum_semantic": test["retrieval"]["semantic"]["rsum"],
            "rsum_coco": test["retrieval"]["coco"]["rsum"], "flip_relation": test["minimal_pairs"]["flip_relation"],
            "mp_mean": test["minimal_pairs"]["mean"],
            "teacher_rerank_rsum": rerank.get("semantic", {}).get("rsum"),
            "val_curve": [[row["step"], row["val_semantic_rsum"]] for row in r["history"]
                          if "val_semantic_rsum" in row],
            **false_negative_rate(img, txt, ws.world.train)}


def report(args) -> dict:
    """Per-seed values of every run in OUT, each arm's mean with its 95 % CI, and the room (oracle - ITC, paired)."""
    torch.set_num_threads(1)
    ws = open_workspace()
    runs = {arm: sorted(args.out.glob(f"{arm}_s*")) for arm in ARMS}
    values = {arm: [run_values(ws, run) for run in found if (run / "metrics.json").is_file()]
              for arm, found in runs.items()}
    keys = ("rsum_semantic", "rsum_coco", "flip_relation", "mp_mean", "fn_rate_i2t", "fn_rate_t2i")
    out = {"per_seed": values, "arms": {arm: {k: seed_stats([v[k] for v in vals]) for k in keys}
                                        for arm, vals in values.items() if vals}}
    teacher = [v["teacher_rerank_rsum"] for v in values.get("itc", []) if v["teacher_rerank_rsum"] is not None]
    out["teacher_rerank_rsum"] = seed_stats(teacher) if teacher else None
    if values.get("itc") and values.get("oracle"):
        by_seed = {arm: {v["seed"]: v for v in values[arm]} for arm in ("itc", "oracle")}
        out["room"] = {k: paired_difference({s: v[k] for s, v in by_seed["oracle"].items()},
                                            {s: v[k] for s, v in by_seed["itc"].items()}) for k in keys[:4]}
        itc, oracle = (out["arms"][a]["rsum_semantic"]["mean"] for a in ("itc", "oracle"))
        if teacher:
            gap = out["teacher_rerank_rsum"]["mean"] - itc
            out["room_fraction_of_teacher_gap"] = (oracle - itc) / gap if gap else None
    if args.json:
        write_json(args.json, out)
    if args.figures:
        curves = {arm: {v["seed"]: tuple(zip(*v["val_curve"], strict=True)) for v in vals}
                  for arm, vals in values.items() if vals}
        save_figure(learning_curves(curves, metric="validation RSUM (semantic)"), "learning_curves", [args.figures])
    print_summary(out)
    return out


def print_summary(out: dict) -> None:
    for arm, stats in out["arms"].items():
        line = ", ".join(f"{k} {v['mean']:.1f}" + (f" [{v['ci95'][0]:.1f}, {v['ci95'][1]:.1f}]" if v["ci95"] else "")
                         for k, v in stats.items())
        print(f"{arm} (n={stats['rsum_semantic']['n']}): {line}")
    for k, v in (out.get("room") or {}).items():
        print(f"room {k}: {v['mean']:.1f} (paired seeds {v['seeds']}, CI {v['ci95']})")
    if out.get("teacher_rerank_rsum"):
        print(f"teacher re-ranking RSUM {out['teacher_rerank_rsum']['mean']:.1f}; room / (teacher - ITC) = "
              f"{out.get('room_fraction_of_teacher_gap')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["train", "report"])
    parser.add_argument("--arm", choices=list(ARMS), default="itc")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--batched", action="store_true", help="train the seeds as one batched model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--figures", type=Path, default=None, help="report: folder for learning_curves.png / .svg")
    args = parser.parse_args()
    train(args) if args.command == "train" else report(args)


if __name__ == "__main__":
    main()
