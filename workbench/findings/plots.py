"""Figures. Functions take arrays/data and return matplotlib axes or figures; :func:`save_figure` writes PNG + SVG.

Every figure the workbench produces goes through :func:`save_figure` into the folders its caller names (a run's
``figures/``). ``FIGURES`` is the repository's ``figures/`` (the README's figures): only ``make figures`` writes there.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

if not os.environ.get("DISPLAY") and "ipykernel" not in os.environ.get("MPLBACKEND", ""):
    matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from workbench.data.world import Split  # noqa: E402
from workbench.io import atomic_write_bytes  # noqa: E402

FIGURES = Path(__file__).resolve().parents[2] / "figures"


def save_figure(fig: plt.Figure, name: str, folders: Sequence[str | Path], *, close: bool = False) -> list[Path]:
    """Write ``name.png`` (150 dpi) and ``name.svg`` into each folder atomically; return the paths. ``close``:
    release the figure afterwards (scripts that draw many figures; a notebook that still shows it keeps it open)."""
    import io

    paths = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        for folder in folders:
            paths.append(atomic_write_bytes(Path(folder) / f"{name}.{fmt}", buf.getvalue()))
    if close:
        plt.close(fig)
    return paths


CAPTION_PT = 10
"""Caption font size in the image grids, in points at the saved size (legible on a projector)."""


def image_grid(images: torch.Tensor, captions: Sequence[Sequence[str]], ncols: int = 4) -> plt.Figure:
    """Images float [n, 3, H, W] in [0, 1], each with a list of caption lines above it (``CAPTION_PT`` points,
    wrapped to the column's width)."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    titles = ["\n".join(textwrap.fill(line, 38, subsequent_indent="  ") for line in lines) for lines in captions]
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, (2.8 + 0.19 * lines) * nrows), squeeze=False,
                             layout="constrained")  # keeps every row's multi-line titles clear of the row above
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(titles[i], fontsize=CAPTION_PT, loc="left")
        for k in (8, 16):
            ax.axhline(k - 0.5, color="white", lw=0.3, alpha=0.4)
            ax.axvline(k - 0.5, color="white", lw=0.3, alpha=0.4)
    return fig


def method_bars(
    names: Sequence[str], means: np.ndarray, stds: np.ndarray, metric_names: Sequence[str], ax: plt.Axes | None = None
) -> plt.Axes:
    """Grouped bars: one group per metric, one bar per method, with std error bars (means/stds [methods, metrics])."""
    ax = ax or plt.subplots(figsize=(1.6 + 1.3 * len(metric_names) * max(1, len(names)) / 3, 3.6))[1]
    width = 0.8 / len(names)
    x = np.arange(len(metric_names))
    for i, name in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * width, means[i], width, yerr=stds[i], capsize=2, label=name)
    ax.set_xticks(x, metric_names)
    ax.set_ylabel("%")
    ax.legend(fontsize=7, ncols=min(4, len(names)))
    ax.grid(axis="y", alpha=0.3)
    return ax


def world_grid(split: Split, n: int = 8) -> plt.Figure:
    """The first ``n`` images of a split with their 5 captions."""
    captions = [[split.texts[c] for c in (split.caption_image == i).nonzero().flatten().tolist()] for i in range(n)]
    return image_grid(split.images[:n], captions)


def world_figure(split: Split, n: int = 8, *, folders: Sequence[str | Path]) -> list[Path]:
    """Save ``world_examples.{png,svg}`` (:func:`world_grid`) into ``folders`` and close the figure."""
    return save_figure(world_grid(split, n), "world_examples", folders, close=True)
