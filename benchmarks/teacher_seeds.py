"""Per-seed table of teacher runs (``train-teacher`` output folders): test minimal pairs per kind, graded Spearman,
the validation curve of flipped relations, and whether each seed meets the relation criterion.

    python benchmarks/teacher_seeds.py RUN_DIR [RUN_DIR ...] --out benchmarks/results/teacher_recipe/NAME.json

Criterion (stated before the runs): test minimal-pair accuracy on flip_relation >= 85 %, and swap_colour, swap_shape,
change_attribute >= 90 % ("meets"). The issue's own criterion, "learns relations", is the first half alone
(flip_relation >= 85 %), reported beside it ("relations").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.io import read_json, write_json  # noqa: E402

KINDS = ("swap_colour", "swap_shape", "flip_relation", "change_attribute")
THRESHOLDS = {"flip_relation": 85.0, "swap_colour": 90.0, "swap_shape": 90.0, "change_attribute": 90.0}


def summarize(run: Path) -> dict:
    config, metrics, history = (read_json(run / f"{n}.json") for n in ("config", "metrics", "history"))
    test = metrics["test"]["minimal_pairs"]
    last = history[-1]
    first_85 = next((row["step"] for row in history if row.get("val_mp_flip_relation", 0) >= 85), None)
    return {
        "run": run.name, "seed": config["training"]["seed"], "training": config["training"],
        "test_minimal_pairs": {k: round(test[k], 1) for k in (*KINDS, "mean")},
        "graded_spearman": round(metrics["test"]["graded_spearman"], 4),
        "val_final": {k: round(last[f"val_mp_{k}"], 1) for k in (*KINDS, "mean")},
        "val_flip_curve": [(row["step"], round(row["val_mp_flip_relation"], 1)) for row in history],
        "first_step_val_flip_ge_85": first_85,
        "meets_criterion": all(test[k] >= t for k, t in THRESHOLDS.items()),
        "learns_relations": test["flip_relation"] >= THRESHOLDS["flip_relation"],
        "train_seconds": round(metrics["train_seconds"]),
    }


def table(rows: list[dict]) -> str:
    head = ("| run | seed | " + " | ".join(KINDS)
            + " | mean | Spearman | relations | meets | val flip >= 85 at | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        t = r["test_minimal_pairs"]
        lines.append(f"| {r['run']} | {r['seed']} | " + " | ".join(f"{t[k]:.1f}" for k in KINDS)
                     + f" | {t['mean']:.1f} | {r['graded_spearman']:.3f} | {'yes' if r['learns_relations'] else 'no'}"
                     + f" | {'yes' if r['meets_criterion'] else 'no'}"
                     + f" | {r['first_step_val_flip_ge_85'] or '-'} | {r['train_seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (a .md table is written beside it)")
    args = parser.parse_args()
    rows = [summarize(r) for r in args.runs]
    text = table(rows)
    print(text)
    if args.out:
        write_json(args.out, {"criterion": THRESHOLDS, "runs": rows,
                              "seeds_meeting": sum(r["meets_criterion"] for r in rows),
                              "seeds_learning_relations": sum(r["learns_relations"] for r in rows)})
        args.out.with_suffix(".md").write_text(text + "\n")
    print(json.dumps({"seeds_meeting": sum(r["meets_criterion"] for r in rows),
                      "seeds_learning_relations": sum(r["learns_relations"] for r in rows), "runs": len(rows)}))


if __name__ == "__main__":
    main()
