"""Figures for the paper's three findings. Each function takes arrays and returns a matplotlib ``Figure``;
save it with :func:`~workbench.findings.plots.save_figure` (PNG + SVG).

- Finding 1: :func:`score_histograms` (densities per group, one panel per score view) and :func:`qq_plots`
  (standardised quantiles against the normal), :func:`scale_check` (a metric per method and teacher view);
- Finding 2: :func:`tau_violins` (per-query Kendall tau, hard vs easy window, per compared pair);
- the headline: :func:`headline_figure` (RSUM per method, ITC and the teacher re-ranker marked);
- Finding 3: :func:`cosine_curves` (gradient cosine over training steps, mean ± std over seeds) and
  :func:`lambda_sweep` (a metric against the distillation weight, with reference lines);
- every comparison: :func:`learning_curves` (validation curves per method and seed, plateau steps marked).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import seaborn as sns
from scipy import stats

from workbench.findings.plots import method_bars, plt
from workbench.findings.stats import ArrayLike, as_array, plateau_step

GROUP_COLOURS = {"positive": "tab:green", "hard": "tab:red", "easy": "tab:blue", "all": "tab:gray"}
KDE_MAX = 5000
"""At most this many values (a fixed-seed subsample) go into each KDE; the histogram uses them all."""


def _finite(name: str, values: ArrayLike) -> np.ndarray:
    arr = as_array(name, values).ravel()
    return arr[np.isfinite(arr)]


def _colour(group: str, index: int) -> str:
    return GROUP_COLOURS.get(group, f"C{index % 10}")


def _panels(n: int, width: float = 4.2, height: float = 3.2) -> tuple[plt.Figure, np.ndarray]:
    if n < 1:
        raise ValueError("need at least one panel of data to plot, got an empty mapping")
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def score_histograms(views: Mapping[str, Mapping[str, ArrayLike]], *, bins: int = 50, kde: bool = True
                     ) -> plt.Figure:
    """Side-by-side score densities: one panel per view, one colour per group (each normalised on its own).

    Args:
        views: ``{view: {group: float [n]}}``, e.g. ``{"teacher logit": {"positive": ..., "hard": ..., "easy": ...},
            "teacher probability": {...}, "student logit": {...}}``. Empty groups are skipped.
        bins: histogram bins per panel (shared by the panel's groups).
        kde: overlay a Gaussian KDE per group (seaborn's, on at most ``KDE_MAX`` values).

    Returns:
        The figure; each legend entry gives the group's n and skewness.
    """
    fig, axes = _panels(len(views))
    for ax, (view, groups) in zip(axes, views.items(), strict=True):
        data = {g: _finite(f"views[{view!r}][{g!r}]", v) for g, v in groups.items()}
        data = {g: v for g, v in data.items() if v.size}
        if not data:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        edges = np.histogram_bin_edges(np.concatenate(list(data.values())), bins=bins)
        for i, (group, v) in enumerate(data.items()):
            colour = _colour(group, i)
            skew = stats.skew(v) if v.size > 2 and v.std() > 0 else float("nan")
            label = f"{group} (n={v.size}, skew {skew:.2f})"
            sns.histplot(v, bins=edges, stat="density", alpha=0.35, color=colour, label=label, ax=ax,
                         edgecolor=None)
            if kde and v.size > 2 and v.std() > 0:
                sub = v if v.size <= KDE_MAX else np.random.default_rng(0).choice(v, KDE_MAX, replace=False)
                sns.kdeplot(sub, color=colour, lw=1.2, ax=ax, clip=(edges[0], edges[-1]))
        ax.set_title(view, fontsize=9)
        ax.set_xlabel("score")
        ax.set_ylabel("density")
        ax.legend(fontsize=6.5)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def qq_plots(views: Mapping[str, Mapping[str, ArrayLike]], *, points: int = 200) -> plt.Figure:
    """Normal Q-Q plots: each group's standardised sample quantiles against standard-normal quantiles.

    Args:
        views: ``{view: {group: float [n]}}`` as :func:`score_histograms`.
        points: quantiles drawn per group (at probabilities ``(i - 0.5) / m``, ``m = min(points, n)``).

    Returns:
        The figure: one panel per view, the diagonal ``y = x`` being a normal distribution.
    """
    fig, axes = _panels(len(views), width=3.6, height=3.4)
    for ax, (view, groups) in zip(axes, views.items(), strict=True):
        for i, (group, values) in enumerate(groups.items()):
            v = _finite(f"views[{view!r}][{group!r}]", values)
            if v.size < 3 or v.std() == 0:
                continue
            m = min(points, v.size)
            probs = (np.arange(1, m + 1) - 0.5) / m
            z = (np.quantile(v, probs) - v.mean()) / v.std(ddof=1)
            ax.plot(stats.norm.ppf(probs), z, ".", ms=3, color=_colour(group, i), label=group)
        lim = 3.5
        ax.plot([-lim, lim], [-lim, lim], color="black", lw=0.8, ls="--")
        ax.set_title(view, fontsize=9)
        ax.set_xlabel("normal quantile")
        ax.set_ylabel("standardised sample quantile")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def tau_violins(taus: Mapping[str, Mapping[str, ArrayLike]], *, windows: Sequence[str] | None = None) -> plt.Figure:
    """Per-query Kendall tau as violins (with mean markers): one group per compared pair, one violin per window.

    Args:
        taus: ``{window: {pair: float [Q]}}`` (NaN = undefined, dropped), e.g. :func:`agreement_taus`'s output.
        windows: the windows to draw, in order (default: all of ``taus``).

    Returns:
        The figure; the dotted line is tau = 0 (no agreement).
    """
    windows = list(windows or taus)
    if not windows:
        raise ValueError("taus must hold at least one window, got none")
    pairs = list(dict.fromkeys(p for w in windows for p in taus[w]))
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(pairs) * len(windows) / 2, 3.4))
    width = 0.8 / len(windows)
    for wi, window in enumerate(windows):
        colour = _colour(window, wi)
        for pi, pair in enumerate(pairs):
            v = _finite(f"taus[{window!r}][{pair!r}]", taus[window].get(pair, []))
            x = pi + (wi - (len(windows) - 1) / 2) * width
            if v.size >= 2 and v.std() > 0:
                body = ax.violinplot(v, positions=[x], widths=width * 0.9, showextrema=False)["bodies"][0]
                body.set_facecolor(colour)
                body.set_alpha(0.4)
            if v.size:
                ax.plot([x], [v.mean()], "o", color=colour, ms=4)
        ax.plot([], [], "s", color=colour, alpha=0.5, label=window)
    ax.axhline(0, color="black", lw=0.8, ls=":")
    ax.set_xticks(range(len(pairs)), [p.replace("_", " vs ") for p in pairs], fontsize=8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("per-query Kendall tau-b")
    ax.legend(fontsize=7, title="window", title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


_LINE_STYLES = ("-", "--", ":", "-.")


def _series_style(i: int) -> tuple[str, str]:
    """(colour, line style) of the ``i``-th series: the 10 default colours, then the same colours dashed, dotted,
    dash-dotted, so up to 40 series stay distinct."""
    return f"C{i % 10}", _LINE_STYLES[(i // 10) % len(_LINE_STYLES)]


def cosine_curves(series: Mapping[str, tuple[ArrayLike, ArrayLike]], *, ylabel: str = "cos(grad ITC, grad term)"
                  ) -> plt.Figure:
    """Gradient cosine over training: one line per series (mean over seeds), with a ±1 std band.

    Args:
        series: ``{label: (steps [S], values [S] or [seeds, S])}``, e.g. ``{"cprd": (steps, cos_cprd per seed)}``
            (NaN values, e.g. an undefined cosine, are left out of the mean).
        ylabel: the y-axis label.

    Returns:
        The figure; the dotted line is 0 (unrelated gradients).
    """
    if not series:
        raise ValueError("series must hold at least one curve, got none")
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for i, (label, (steps, values)) in enumerate(series.items()):
        x = as_array(f"series[{label!r}] steps", steps, ndim=1)
        y = as_array(f"series[{label!r}] values", values)
        y = y[None] if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[1] != x.size:
            raise ValueError(f"series[{label!r}] values must have shape [{x.size}] or [seeds, {x.size}], got {y.shape}")
        with warnings.catch_warnings():  # an all-NaN column is a NaN point, by design
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = np.nanmean(y, 0), (np.nanstd(y, 0, ddof=1) if len(y) > 1 else np.zeros(x.size))
        color, style = _series_style(i)
        ax.plot(x, mean, marker=".", color=color, ls=style, label=f"{label} ({len(y)} seed{'s' * (len(y) > 1)})")
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
    ax.axhline(0, color="black", lw=0.8, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def learning_curves(curves: Mapping[str, Mapping[int, tuple[ArrayLike, ArrayLike]]], *, metric: str = "validation RSUM",
                    tolerance: float = 0.01) -> plt.Figure:
    """Validation curves per method and seed, each seed's plateau step marked (:func:`plateau_step`): the figure
    that decides how many steps a comparison needs.

    Args:
        curves: ``{method: {seed: (steps [S], values [S])}}``.
        metric: the y-axis label.
        tolerance: relative distance to the plateau (the mean of the last 3 values) that counts as reached.

    Returns:
        The figure: a thin line per seed, a dot at the step from which it stays within ``tolerance`` of its plateau,
        an open circle at its end when the last values still rise (the run should have been longer).
    """
    if not curves or not all(curves.values()):
        raise ValueError(f"curves must map each method to at least one seed's curve, got {dict(curves)!r}")
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for i, (method, seeds) in enumerate(curves.items()):
        color, style = _series_style(i)
        for j, (seed, (steps, values)) in enumerate(sorted(seeds.items())):
            x = as_array(f"curves[{method!r}][{seed}] steps", steps, ndim=1)
            y = as_array(f"curves[{method!r}][{seed}] values", values, ndim=1)
            plateau = plateau_step(x, y, tolerance=tolerance)
            label = f"{method} ({len(seeds)} seed{'s' * (len(seeds) > 1)})" if j == 0 else None
            ax.plot(x, y, color=color, ls=style, lw=1, alpha=0.8, label=label)
            ax.plot([plateau["step"]], [y[np.flatnonzero(x == plateau["step"])[0]]], "o", color=color, ms=4)
            if not plateau["converged_at_end"]:
                ax.plot([x[-1]], [y[-1]], "o", mfc="none", color=color, ms=8)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"dot: within {tolerance:.0%} of the plateau from there on; circle: still rising", fontsize=9)
    if len(curves) > 4:  # many methods: the legend beside the axes, not over the curves
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.set_size_inches(8.2, max(3.6, 0.2 * len(curves) + 1.0))  # as tall as its legend: axes not squashed
    else:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def lambda_sweep(lams: ArrayLike, means: ArrayLike, stds: ArrayLike, *, metric: str = "RSUM",
                 references: Mapping[str, tuple[float, float]] | None = None) -> plt.Figure:
    """A metric against the distillation weight lambda, mean ± std over seeds, with horizontal reference lines.

    Args:
        lams: float [N] the weights (log-scaled axis when all are > 0 and span a factor >= 10).
        means, stds: float [N] the metric's mean and std at each weight.
        metric: the y-axis label.
        references: ``{label: (mean, std)}`` drawn as lines with a ±std band (e.g. ITC only, teacher re-ranker).

    Returns:
        The figure.
    """
    x = as_array("lams", lams, ndim=1)
    y = as_array("means", means, shape=x.shape)
    e = as_array("stds", stds, shape=x.shape)
    order = np.argsort(x, kind="stable")
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.errorbar(x[order], y[order], yerr=e[order], marker="o", capsize=3, color="C0", label="distillation (λ sweep)")
    for i, (label, (mean, std)) in enumerate((references or {}).items()):
        ax.axhline(mean, color=f"C{i + 1}", ls="--", lw=1, label=label)
        ax.axhspan(mean - std, mean + std, color=f"C{i + 1}", alpha=0.12)
    if x.size and (x > 0).all() and x.max() / x.min() >= 10:
        ax.set_xscale("log")
    ax.set_xlabel("λ (distillation weight)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def scale_check(results: Mapping[str, Mapping[str, tuple[float, float]]], *, metric: str = "RSUM") -> plt.Figure:
    """The scale check: a metric per method (groups) and teacher view (bars), mean ± std.

    Args:
        results: ``{method: {view: (mean, std)}}``, e.g. ``{"kl": {"logit": (450, 3), "probability": ...}, ...}``.
        metric: the y-axis label.

    Returns:
        The figure: bars that move across views within a method mean the method reads the teacher's scale.
    """
    if not results:
        raise ValueError("results must hold at least one method, got none")
    methods = list(results)
    views = list(dict.fromkeys(v for m in methods for v in results[m]))
    nan = (np.nan, np.nan)
    means = np.array([[results[m].get(v, nan)[0] for m in methods] for v in views], dtype=float)
    stds = np.array([[results[m].get(v, nan)[1] for m in methods] for v in views], dtype=float)
    ax = method_bars(views, means, stds, methods)
    ax.set_ylabel(metric)
    ax.set_title("teacher scores fed as: " + " / ".join(views), fontsize=9)
    ax.figure.tight_layout()
    return ax.figure


def headline_figure(retrieval: Mapping[str, Mapping[str, Mapping[str, float]]]):
    """Bar chart of semantic RSUM (mean ± std) per method, the ITC-only and teacher re-ranking levels marked."""
    names = [n for n in retrieval if "rsum" in retrieval[n]]
    means = [retrieval[n]["rsum"]["mean"] for n in names]
    stds = [retrieval[n]["rsum"]["std"] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), means, yerr=[s if s is not None else 0.0 for s in stds], capsize=2, color="#5b8fd9")
    for key, style in (("itc", "--"), ("teacher_rerank", ":")):
        if key in retrieval:
            ax.axhline(retrieval[key]["rsum"]["mean"], ls=style, color="k", lw=1, label=key)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    lo = min(m - (s or 0.0) for m, s in zip(means, stds, strict=True))
    ax.set_ylim(max(0, lo - 20), max(means) + 20)
    ax.set_ylabel("RSUM (semantic, test)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def paired_differences(diffs: Mapping[str, Mapping[str, object]], *, metric: str = "test RSUM difference",
                       title: str | None = None) -> plt.Figure:
    """Paired differences by seed, one row each: every seed's difference (dots), the mean (a bar tick) and its
    95 % t interval (a line); the dashed line is 0, so a row whose line misses it is a difference that holds.

    Args:
        diffs: ``{row label: paired_difference(...)}`` (``values``, ``mean``, ``ci95``; ``ci95`` may be None).
    """
    if not diffs:
        raise ValueError("diffs must hold at least one paired difference, got none")
    labels = list(diffs)
    fig, ax = plt.subplots(figsize=(5 + 0.07 * max(map(len, labels)), 0.55 * len(labels) + 1.4))
    for y, label in enumerate(labels):
        d = diffs[label]
        values = _finite(f"diffs[{label!r}]['values']", d["values"])
        ax.scatter(values, np.full(values.shape, y), s=22, color="#5b8fd9", alpha=0.8, zorder=3,
                   label="one seed" if y == 0 else None)
        if d.get("ci95") is not None:
            ax.plot(d["ci95"], [y, y], color="k", lw=2, zorder=2, label="95 % CI" if y == 0 else None)
        ax.plot([d["mean"]] * 2, [y - 0.25, y + 0.25], color="k", lw=2, zorder=4)
    ax.axvline(0, ls="--", color="0.4", lw=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _grid_label(method: str, point: Mapping[str, object], grid: Sequence[Mapping[str, object]]) -> str:
    """``"kl: λ = 0.25, logits/4"``; the view left out when every point of the method's grid has the same one."""
    label = f"{method}: λ = {point['lambda']:g}"
    return label + f", {point['view']}" if len({q["view"] for q in grid}) > 1 else label


def tuning_grid(tuning: Mapping[str, Mapping[str, object]], reference: float | None = None, *,
                title: str | None = None) -> plt.Figure:
    """The tuning grid (``workbench.experiments.tuning.grid_results``): one row per method and grid point, its final
    validation RSUM as a dot, the chosen point filled black; ``reference`` (e.g. ITC alone on the same seed) as a
    dashed line. A point without a finite value (not run, diverged) is left out of the axis and named so.

    A row names the teacher's view only for a method whose grid has more than one (a scale-free or teacher-free
    method is trained on one nominal view, which would read as a choice it never made).

    Args:
        tuning: ``{method: {"grid": [{"lambda", "view", "val_rsum"}], "chosen": point}}``.
    """
    rows = [(_grid_label(method, q, t["grid"]), q.get("val_rsum"), q == t["chosen"])
            for method, t in tuning.items() for q in t["grid"]]
    if not rows:
        raise ValueError("tuning must hold at least one method with a grid, got none")
    shown = [value is not None and bool(np.isfinite(value)) for _, value, _ in rows]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.4))
    first_chosen = next((y for y, (_, _, chosen) in enumerate(rows) if chosen and shown[y]), None)
    for y, (_, value, chosen) in enumerate(rows):
        if shown[y]:
            ax.scatter([value], [y], s=45, zorder=3, color="k" if chosen else "white", edgecolors="k",
                       label="chosen" if y == first_chosen else None)
    if reference is not None:
        ax.axvline(reference, ls="--", color="0.4", lw=1, label=f"reference {reference:.1f}")
    labels = [label + ("" if ok else " (no value)") for (label, _, _), ok in zip(rows, shown, strict=True)]
    ax.set_yticks(range(len(rows)), labels, fontsize=10)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # top to bottom, half a row of margin
    ax.set_xlabel("final validation RSUM (semantic)")
    ax.set_title(title or "tuning grid (validation split)", fontsize=10)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
