"""Train and evaluate one student on a named world (no teacher): learning curves, test metrics, FN rate.

    PYTHONPATH=. python research/room/run.py --world ambiguous-v1 --student cells-v1 --near-misses \
        --near-miss-count 0 --steps 3000 --seed 0 --out runs/room/x

Writes OUT/metrics.json (test: retrieval per protocol, minimal pairs per kind; train: FN rate of gallery-mined
top-8), OUT/history.json (validation RSUM and minimal pairs every --eval-every steps), OUT/config.json and
OUT/student.pt (state dict).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from research.room.common import false_negative_rate, get_stem, get_world, world_config  # noqa: E402
from workbench.data.perturbations import minimal_pairs  # noqa: E402
from workbench.evaluation.embed import embed_split
from workbench.evaluation.evaluate import (
    evaluate_student,  # noqa: E402
    student_scorer,  # noqa: E402
)
from workbench.evaluation.minimal_pairs import minimal_pair_accuracy  # noqa: E402
from workbench.evaluation.retrieval import retrieval_metrics  # noqa: E402
from workbench.models.student import DualEncoder, student_preset  # noqa: E402
from workbench.training.config import FitConfig  # noqa: E402
from workbench.training.loop import fit  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--world", default="ambiguous-v1")
    p.add_argument("--student", default="relation-blind-v1")
    p.add_argument("--student-opts", default="{}", help="JSON dict of StudentConfig overrides")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--positives", default="semantic", choices=["semantic", "coco"])
    p.add_argument("--near-misses", action="store_true")
    p.add_argument("--near-miss-count", type=int, default=1)
    p.add_argument("--flip-weight", type=float, default=1.0)
    p.add_argument("--group-batches", action="store_true", help="privileged: whole contrast groups per batch")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--no-fn", action="store_true", help="skip the FN rate of mined train slates")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    world = get_world(a.world)
    stem = get_stem(a.world, world)
    scfg = student_preset(a.student, **json.loads(a.student_opts))
    torch.manual_seed(a.seed)
    student = DualEncoder(scfg, stem=stem)
    cfg = FitConfig(steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, positives=a.positives,
                    near_misses=a.near_misses, near_miss_count=a.near_miss_count,
                    near_miss_flip_weight=a.flip_weight, group_batches=a.group_batches, eval_every=a.eval_every,
                    device="cpu", amp=False)
    val_pairs = minimal_pairs(world.val, per_kind=300)
    relations = world.val.relations()
    t0 = time.time()

    def evaluate(model) -> dict:
        img, txt = embed_split(model, world.val)
        m = retrieval_metrics(img.float(), txt.float(), relations)
        row = {f"val_{pr}_{k}": m[pr][k] for pr in m for k in ("r1_i2t", "r1_t2i", "rsum")}
        mp = minimal_pair_accuracy(student_scorer(model, world.val), val_pairs)
        row |= {f"val_mp_{k}": v for k, v in mp.items()}
        row["elapsed_s"] = time.time() - t0
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        return row

    state = fit(cfg, world, student, evaluate=evaluate)
    seconds = time.time() - t0
    student.eval()
    test = evaluate_student(student, world.test, minimal=minimal_pairs(world.test, per_kind=500))
    metrics = {"retrieval": test["retrieval"], "minimal_pairs": test["minimal_pairs"], "train_seconds": seconds,
               "steps": a.steps}
    if not a.no_fn:
        img, txt = embed_split(student, world.train)
        metrics["train_fn"] = false_negative_rate(img.float(), txt.float(), world.train, k=8)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "history.json").write_text(json.dumps(state.history, indent=1))
    (out / "config.json").write_text(json.dumps({"argv": sys.argv, "args": vars(a), "fit": cfg.to_dict(),
                                                 "student": asdict(scfg), "world": asdict(world_config(a.world))},
                                                indent=1, default=str))
    torch.save(student.state_dict(), out / "student.pt")
    r = test["retrieval"]
    print("TEST", json.dumps({"mp": {k: round(v, 1) for k, v in test["minimal_pairs"].items()},
                              "rsum_sem": round(r["semantic"]["rsum"], 1), "rsum_coco": round(r["coco"]["rsum"], 1),
                              **{k: round(v, 1) for k, v in metrics.get("train_fn", {}).items()}}), flush=True)
    return metrics


if __name__ == "__main__":
    main()
