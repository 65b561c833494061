"""How well the teacher detects the false negatives of mined slates (the ``drop_teacher_matches`` rule).

For each trained ITC student (a ``python -m workbench train`` folder): its gallery-mined top-K negatives per query
on the training split (own captions excluded: the "coco" relation, as every planned run mines), the ground truth of
each mined pair (the world's semantic relation: is the caption true of the image?) and the committed teacher's
probability. Reported per direction: the false-negative rate of the slates as mined, the rate left after dropping
the negatives the teacher scores >= threshold, the share of true false negatives dropped (recall) and the share of
true negatives dropped with them (collateral).

    PYTHONPATH=. python research/room/fn_teacher.py RUN_DIR [RUN_DIR ...] --json FILE [--threshold 0.5] [--k 8]
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from research.room.common import mined_pairs  # noqa: E402
from workbench.data.world import WorldConfig  # noqa: E402
from workbench.evaluation.embed import embed_split  # noqa: E402
from workbench.experiments import open_workspace  # noqa: E402
from workbench.findings.stats import seed_stats  # noqa: E402
from workbench.io import read_json, write_json  # noqa: E402
from workbench.training.checkpoint import load_student  # noqa: E402
from workbench.training.slates import teacher_matches  # noqa: E402


def detection(truth: torch.Tensor, flagged: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Rates (%) over the valid mined negatives: as mined, after dropping ``flagged``, recall, collateral."""
    truth, flagged = truth & valid, flagged & valid
    kept = valid & ~flagged
    pct = lambda a, b: 100.0 * a.sum().item() / max(b.sum().item(), 1)  # noqa: E731
    return {"fn_rate": pct(truth, valid), "fn_rate_after": pct(truth & kept, kept),
            "recall": pct(truth & flagged, truth), "collateral": pct(~truth & flagged, valid & ~truth),
            "dropped": pct(flagged, valid)}


@torch.no_grad()
def measure(run: Path, threshold: float, k: int, store: Path | None) -> dict[str, dict[str, float]]:
    ws = workspace(json.dumps(read_json(run / "config.json")["data"]["world"], sort_keys=True), store)
    student = load_student(run / "checkpoint").eval()
    img_emb, txt_emb = embed_split(student, ws.world.train)
    scores = ws.teacher_scores("train")
    out = {}
    for direction in ("i2t", "t2i"):
        img, cap, valid = mined_pairs(img_emb, txt_emb, ws.world.train, direction, k)
        truth = ws.world.train.relations()["semantic"].pairs(img.flatten(), cap.flatten()).reshape(img.shape)
        _, probs = scores(img.flatten(), cap.flatten())
        flagged = teacher_matches(probs.reshape(img.shape), torch.zeros_like(valid), threshold)  # the trainer's rule
        out[direction] = detection(truth, flagged, valid)
    return out


@functools.lru_cache(maxsize=2)
def workspace(world_json: str, store: Path | None):
    """One workspace (world built, teacher loaded) per world the runs were trained on."""
    return open_workspace(WorldConfig(**json.loads(world_json)), store_path=store)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--store", type=Path, default=None, help="teacher-score store to read / fill (default: none)")
    a = p.parse_args()
    torch.set_num_threads(1)
    per_run = {}
    for run in a.runs:
        per_run[str(run)] = measure(run, a.threshold, a.k, a.store)
        print(run, {d: {m: round(v, 2) for m, v in r.items()} for d, r in per_run[str(run)].items()}, flush=True)
    summary = {d: {m: seed_stats([r[d][m] for r in per_run.values()]) for m in next(iter(per_run.values()))[d]}
               for d in ("i2t", "t2i")}
    write_json(a.json, {"threshold": a.threshold, "k": a.k, "per_run": per_run, "summary": summary})


if __name__ == "__main__":
    main()
