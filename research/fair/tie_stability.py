"""Finding 2, beside the intervention: how stable is the teacher's order within relevance ties across teacher seeds?

The paper calls the order among easy negatives noise. On the built-in world many negatives tie in graded relevance
(the truth has no order between them), so the teacher's order inside a tie is either knowledge every training seed
picks up (or a bias of the recipe), or each seed's own noise (same order for about half the pairs). For the ITC
student's evaluation slates (test split, both directions, hard = its top-16, easy = 16 beyond rank 100), every
teacher seed scores the same entries; we report, for each pair (committed teacher, other seed), the share of pairs
both order the same way, within ties and across them, in each window, and each seed's pairwise accuracy against the
truth by relevance gap.

    PYTHONPATH=. python research/fair/tie_stability.py --student RUN/checkpoint --teachers T0 T1 ... --out FILE

(``T0`` is the reference; the committed teacher is ``workbench/assets/teacher``.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from workbench.data.world import build_world
from workbench.evaluation.slates import build_eval_slates
from workbench.experiments.workspace import WORLD_PRESETS
from workbench.findings.agreement import accuracy_by_gap, tie_stability
from workbench.findings.stats import seed_stats
from workbench.io import write_json
from workbench.models.teacher import load_teacher
from workbench.training.checkpoint import load_student

WINDOWS = ("hard", "easy")


def slates_by_teacher(student, teachers: list[Path], split, direction: str) -> list:
    """The same evaluation slates (windows fixed by the student and the seed), scored by each teacher."""
    return [build_eval_slates(student, load_teacher(t), split, direction) for t in teachers]


def compare(slates: list) -> dict:
    """Tie stability of each teacher against the first, per window; accuracy by gap of each teacher."""
    ref = slates[0]
    out = {"tie_stability": {}, "accuracy": {}}
    for w in WINDOWS:
        mask = getattr(ref, w).numpy()
        pairs = [tie_stability(ref.teacher.numpy(), sl.teacher.numpy(), ref.relevance.numpy(), mask)
                 for sl in slates[1:]]
        out["tie_stability"][w] = {"per_pair": pairs,
                                   "tied": seed_stats([p["tied"]["same_order"] for p in pairs]),
                                   "untied": seed_stats([p["untied"]["same_order"] for p in pairs])}
        out["accuracy"][w] = [accuracy_by_gap(sl.teacher.numpy(), sl.relevance.numpy(), mask, resamples=200)
                              for sl in slates]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, required=True, help="an ITC student's checkpoint folder")
    parser.add_argument("--teachers", type=Path, nargs="+", required=True, help="teacher folders (first = reference)")
    parser.add_argument("--world", default="default")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.teachers) < 2:
        parser.error(f"--teachers needs at least two teacher folders, got {len(args.teachers)}")
    torch.set_num_threads(1)
    split = build_world(WORLD_PRESETS[args.world]).test
    student = load_student(args.student, device="cpu")
    result = {"student": str(args.student), "teachers": [str(t) for t in args.teachers]}
    for direction in ("i2t", "t2i"):
        result[direction] = compare(slates_by_teacher(student, args.teachers, split, direction))
        for w in WINDOWS:
            ts = result[direction]["tie_stability"][w]
            print(f"{direction} {w}: same order within ties {ts['tied']['values']}, across ties "
                  f"{ts['untied']['values']}")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
