"""Mean ± std of test retrieval over seeds for a folder of run folders (``NAME_seedS/metrics.json``).

    python benchmarks/summarize_runs.py benchmarks/results/gpu_2026-11-27/headline_full
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def summarize(folder: Path) -> dict[str, dict[str, list[float]]]:
    """{method: {metric: [value per seed]}} from every ``folder/*_seed*/metrics.json``."""
    runs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    files = sorted(folder.glob("*_seed*/metrics.json"))
    if not files:
        raise SystemExit(f"no */metrics.json run folders under {folder}")
    for path in files:
        m = json.loads(path.read_text())
        sem = m["retrieval"]["semantic"]
        row = runs[path.parent.name.rsplit("_seed", 1)[0]]
        for key in ("r1_i2t", "r1_t2i", "rsum"):
            row[key].append(sem[key])
        row["flip_relation"].append(m["minimal_pairs"]["flip_relation"])
        row["train_seconds"].append(m["train_seconds"])
        if "rerank" in m:
            row["rerank_rsum"].append(m["rerank"]["semantic"]["rsum"])
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    runs = summarize(ap.parse_args().folder)
    print("| method | seeds | R@1 i2t | R@1 t2i | RSUM | flip-relation acc. | train s/run |")
    print("|---|---|---|---|---|---|---|")
    for name, row in runs.items():
        cells = [f"{np.mean(row[k]):.1f} ± {np.std(row[k], ddof=1) if len(row[k]) > 1 else 0:.1f}"
                 for k in ("r1_i2t", "r1_t2i", "rsum", "flip_relation")]
        print(f"| {name} | {len(row['rsum'])} | " + " | ".join(cells) + f" | {np.mean(row['train_seconds']):.0f} |")
        if row["rerank_rsum"]:
            print(f"| teacher re-ranking {name} | {len(row['rerank_rsum'])} | | | "
                  f"{np.mean(row['rerank_rsum']):.1f} ± {np.std(row['rerank_rsum'], ddof=1):.1f} | | |")


if __name__ == "__main__":
    main()
