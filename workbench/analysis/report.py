"""Tables and standard figures from run metrics: mean ± std over seeds, markdown/CSV, the world example grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.analysis.plots import FIGURES, image_grid, method_bars, save_figure
from workbench.data.world import Split

COLUMNS = {  # (section, protocol, metric) -> column label
    ("retrieval", "semantic", "r1_i2t"): "R@1 i2t",
    ("retrieval", "semantic", "r5_i2t"): "R@5 i2t",
    ("retrieval", "semantic", "r1_t2i"): "R@1 t2i",
    ("retrieval", "semantic", "r5_t2i"): "R@5 t2i",
    ("retrieval", "semantic", "rsum"): "RSUM",
    ("retrieval", "coco", "r1_i2t"): "COCO R@1 i2t",
    ("retrieval", "coco", "r1_t2i"): "COCO R@1 t2i",
    ("retrieval", "coco", "rsum"): "COCO RSUM",
}


def world_figure(split: Split, n: int = 8, folders: Sequence[str | Path] = (FIGURES,)) -> list[Path]:
    """Save ``world_examples.{png,svg}``: the first ``n`` images of a split with their 5 captions."""
    captions = [[split.texts[c] for c in (split.caption_image == i).nonzero().flatten().tolist()] for i in range(n)]
    fig = image_grid(split.images[:n], captions)
    return save_figure(fig, "world_examples", folders)


def flat_metrics(metrics: Mapping[str, Any], section: str = "retrieval") -> dict[str, float]:
    """One row of the results table from a run's metrics (``section`` = "retrieval" or "rerank")."""
    row = {}
    for (sec, protocol, metric), label in COLUMNS.items():
        row[label] = metrics[section if sec == "retrieval" else sec][protocol][metric]
    if section == "retrieval":  # minimal pairs are the student's own; a re-ranking row has none
        row |= {f"MP {kind}": v for kind, v in metrics.get("minimal_pairs", {}).items() if kind != "mean"}
    return row


def summarise(rows_by_method: Mapping[str, Sequence[Mapping[str, float]]]) -> pd.DataFrame:
    """Mean and std over seeds: a DataFrame with a (method) index and (metric, mean|std) columns."""
    frames = []
    for method, rows in rows_by_method.items():
        df = pd.DataFrame(list(rows))
        frames.append(pd.concat({"mean": df.mean(), "std": df.std(ddof=1).fillna(0.0), "n": df.count()}, axis=1)
                      .stack().rename(method))
    table = pd.concat(frames, axis=1).T
    return table


def markdown_table(summary: pd.DataFrame, metrics: Sequence[str], decimals: int = 1) -> str:
    """``mean ± std`` cells, one row per method (n seeds in the last column)."""
    header = "| method | " + " | ".join(metrics) + " | seeds |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    for method, row in summary.iterrows():
        cells = []
        for m in metrics:
            mean, std = row.get((m, "mean"), np.nan), row.get((m, "std"), np.nan)
            cells.append("–" if np.isnan(mean) else f"{mean:.{decimals}f} ± {std:.{decimals}f}")
        n = int(row.get((metrics[0], "n"), 0))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def results_figure(summary: pd.DataFrame, metrics: Sequence[str], name: str,
                   folders: Sequence[str | Path] = (FIGURES,)) -> list[Path]:
    """Grouped bar chart of ``metrics`` (mean ± std) per method."""
    means = np.array([[summary.loc[m, (k, "mean")] for k in metrics] for m in summary.index])
    stds = np.array([[summary.loc[m, (k, "std")] for k in metrics] for m in summary.index])
    ax = method_bars(list(summary.index), means, stds, metrics)
    ax.set_ylim(0, 105)
    ax.set_title("test split, built-in world (mean ± std over seeds)", fontsize=9)
    return save_figure(ax.figure, name, folders)


def headline_figure(retrieval: Mapping[str, Mapping[str, Mapping[str, float]]]):
    """Bar chart of semantic RSUM (mean ± std) per method, the ITC-only and teacher re-ranking levels marked."""
    import matplotlib.pyplot as plt

    names = [n for n in retrieval if "rsum" in retrieval[n]]
    means = [retrieval[n]["rsum"]["mean"] for n in names]
    stds = [retrieval[n]["rsum"]["std"] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), means, yerr=stds, capsize=2, color="#5b8fd9")
    for key, style in (("itc", "--"), ("teacher_rerank", ":")):
        if key in retrieval:
            ax.axhline(retrieval[key]["rsum"]["mean"], ls=style, color="k", lw=1, label=key)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    lo = min(m - s for m, s in zip(means, stds, strict=True))
    ax.set_ylim(max(0, lo - 20), max(means) + 20)
    ax.set_ylabel("RSUM (semantic, test)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
