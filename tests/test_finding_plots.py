"""Findings figures: each runs on small inputs, draws what it was given, and saves non-empty PNG + SVG."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex

from workbench.findings.figures import (
    cosine_curves,
    lambda_sweep,
    learning_curves,
    qq_plots,
    scale_check,
    score_histograms,
    tau_violins,
)
from workbench.findings.plots import save_figure

RNG = np.random.default_rng(0)
VIEWS = {
    "teacher logit": {"positive": RNG.normal(4, 1, 50), "hard": RNG.normal(0, 1, 80), "easy": RNG.normal(-4, 1, 80)},
    "teacher probability": {"positive": RNG.beta(8, 1, 50), "hard": RNG.beta(1, 3, 80), "easy": RNG.beta(1, 30, 80)},
    "student logit": {"positive": RNG.normal(9, 2, 50), "hard": RNG.normal(6, 2, 80), "easy": np.array([])},
}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _saved(fig, name, tmp_path) -> None:
    paths = save_figure(fig, name, (tmp_path,))
    assert sorted(p.suffix for p in paths) == [".png", ".svg"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_histograms(tmp_path) -> None:
    fig = score_histograms(VIEWS)
    assert len(fig.axes) == 3
    labels = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert len(labels) == 2  # the empty easy group is skipped
    assert labels[0].startswith("positive (n=50, skew ") and labels[1].startswith("hard (n=80, skew ")
    assert len(fig.axes[0].lines) == 3  # one KDE per group
    assert len(score_histograms(VIEWS, kde=False).axes[0].lines) == 0
    _saved(fig, "hist", tmp_path)


def test_qq_plots_normal_sample_lies_on_the_diagonal(tmp_path) -> None:
    sample = np.random.default_rng(1).normal(5, 3, 4000)
    fig = qq_plots({"normal": {"hard": sample}, "skewed": {"hard": np.random.default_rng(2).exponential(size=4000)}})
    normal_pts = fig.axes[0].lines[0]
    x, y = normal_pts.get_xdata(), normal_pts.get_ydata()
    assert len(x) == 200 and np.abs(y - x)[10:-10].max() < 0.15
    skew_pts = fig.axes[1].lines[0]
    assert skew_pts.get_ydata()[-1] - skew_pts.get_xdata()[-1] > 1.0  # the long right tail rises above y = x
    _saved(fig, "qq", tmp_path)


def test_tau_violins_marks_the_means(tmp_path) -> None:
    taus = {"hard": {"teacher_relevance": np.array([0.5, 0.7, np.nan, 0.9]), "teacher_student": np.array([0.1, 0.3])},
            "easy": {"teacher_relevance": np.array([0.0, -0.2, 0.2]), "teacher_student": np.array([np.nan])}}
    fig = tau_violins(taus)
    ax = fig.axes[0]
    means = sorted(round(float(line.get_ydata()[0]), 6) for line in ax.lines if line.get_marker() == "o")
    assert means == [0.0, 0.2, 0.7]  # the all-NaN entry draws nothing
    assert [t.get_text() for t in ax.get_xticklabels()] == ["teacher vs relevance", "teacher vs student"]
    _saved(fig, "taus", tmp_path)
    with pytest.raises(ValueError, match="at least one window"):
        tau_violins({})


def test_cosine_curves_mean_over_seeds(tmp_path) -> None:
    steps = np.array([0, 100, 200])
    cprd_runs = np.array([[0.1, 0.2, np.nan], [0.3, 0.4, 0.5]])
    fig = cosine_curves({"cprd": (steps, cprd_runs), "kl": (steps, [0.0, -0.1, 0.2])})
    ax = fig.axes[0]
    cprd = ax.lines[0]
    np.testing.assert_allclose(cprd.get_ydata(), [0.2, 0.3, 0.5])
    assert cprd.get_label() == "cprd (2 seeds)" and ax.lines[1].get_label() == "kl (1 seed)"
    _saved(fig, "cos", tmp_path)
    with pytest.raises(ValueError, match=r"values must have shape \[3\] or \[seeds, 3\]"):
        cosine_curves({"x": (steps, np.zeros((2, 4)))})


def test_learning_curves_mark_each_seed_s_plateau_and_a_curve_still_rising(tmp_path) -> None:
    steps = [500, 1000, 1500, 2000, 2500]
    flat = [400.0, 440.0, 450.0, 451.0, 450.0]  # plateau 450.3: within 1 % from step 1,500 on
    rising = [300.0, 350.0, 400.0, 450.0, 500.0]  # plateau 450: only the last two reach it, and it still rises
    fig = learning_curves({"itc": {0: (steps, flat)}, "oracle": {0: (steps, rising), 1: (steps, flat)}})
    lines = fig.axes[0].lines
    markers = [(ln.get_xdata().tolist(), ln.get_ydata().tolist(), ln.get_markerfacecolor()) for ln in lines
               if ln.get_marker() == "o"]
    assert tuple(markers[0][:2]) == ([1500], [450.0])  # itc seed 0's plateau step
    assert tuple(markers[1][:2]) == ([2000], [450.0])  # oracle seed 0: from 2,000 on >= 0.99 x 450
    assert markers[2][:2] == ([2500], [500.0]) and markers[2][2] == "none"  # ... and still rising: open circle
    labels = [ln.get_label() for ln in lines if not ln.get_label().startswith("_")]
    assert labels == ["itc (1 seed)", "oracle (2 seeds)"]
    _saved(fig, "curves", tmp_path)
    with pytest.raises(ValueError, match="at least one seed"):
        learning_curves({"itc": {}})


@pytest.mark.parametrize("draw", [
    lambda n: learning_curves({f"m{i}": {0: ([1, 2, 3], [1.0, 2.0, 3.0 + i])} for i in range(n)}),
    lambda n: cosine_curves({f"m{i}": ([1, 2, 3], [0.1, 0.2, 0.3 + i]) for i in range(n)}),
], ids=["learning_curves", "cosine_curves"])
def test_curves_keep_more_than_ten_methods_apart(draw) -> None:
    lines = [ln for ln in draw(13).axes[0].lines if not ln.get_label().startswith("_")]  # > the 10 default colours
    styles = [(to_hex(ln.get_color()), ln.get_linestyle()) for ln in lines]  # 'C10' is drawn as 'C0'
    assert len(styles) == 13 and len(set(styles)) == 13, styles


def test_learning_curves_legend_of_many_methods_does_not_squash_the_axes() -> None:
    """25 methods (the tuning grid's curves): the legend beside the axes is no taller than the axes' own column."""
    fig = learning_curves({f"method_{i}__l0.25_logits": {0: ([1, 2, 3], [1.0, 2.0, 3.0 + i])} for i in range(25)})
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.height <= fig.bbox.height and ax.get_window_extent().height >= 0.5 * legend.height


def test_lambda_sweep(tmp_path) -> None:
    fig = lambda_sweep([1.0, 0.1, 10.0], [450.0, 440.0, 400.0], [2.0, 3.0, 8.0], metric="RSUM",
                       references={"ITC only": (445.0, 2.0), "teacher re-ranker": (480.0, 1.0)})
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0.1, 1.0, 10.0])  # sorted by lambda
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [440.0, 450.0, 400.0])
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "RSUM"
    assert lambda_sweep([0.0, 0.5], [1.0, 2.0], [0.0, 0.0]).axes[0].get_xscale() == "linear"
    _saved(fig, "lam", tmp_path)
    with pytest.raises(ValueError, match="means must have shape"):
        lambda_sweep([1.0, 2.0], [1.0], [1.0, 1.0])


def test_scale_check(tmp_path) -> None:
    results = {"kl": {"logit": (450.0, 2.0), "probability": (400.0, 5.0), "tempered": (440.0, 3.0)},
               "cprd": {"logit": (455.0, 2.0), "probability": (456.0, 2.0)}}
    fig = scale_check(results)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights[:2] == [450.0, 455.0] and heights[2:4] == [400.0, 456.0] and heights[4] == 440.0
    _saved(fig, "scale", tmp_path)


def test_paired_differences_draws_every_seed_and_interval(tmp_path) -> None:
    from workbench.findings.figures import paired_differences
    from workbench.findings.stats import paired_difference

    diffs = {"CPRD − ITC": paired_difference([450.0, 455.0, 452.0], [440.0, 441.0, 445.0]),
             "one seed": paired_difference([1.0], [0.5])}
    fig = paired_differences(diffs, title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(diffs)
    dots = sum(len(c.get_offsets()) for c in ax.collections)
    assert dots == 4  # every seed's difference is a point
    fig.savefig(tmp_path / "p.png")
    with pytest.raises(ValueError, match="at least one paired difference"):
        paired_differences({})


def test_tuning_grid_marks_the_chosen_point_and_names_missing_ones(tmp_path) -> None:
    from matplotlib.colors import to_rgba

    from workbench.experiments.tuning import choose
    from workbench.findings.figures import tuning_grid

    kl = [{"lambda": 0.25, "view": "logits", "val_rsum": 430.0}, {"lambda": 1.0, "view": "logits/4", "val_rsum": None}]
    ranking = [{"lambda": 0.25, "view": "logits", "val_rsum": 449.9}, {"lambda": 1.0, "view": "logits",
                                                                       "val_rsum": 454.5}]
    tuning = {m: {"grid": g, "chosen": choose(g)} for m, g in (("kl", kl), ("listmle", ranking))}
    fig = tuning_grid(tuning, reference=446.0)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # the view is named where the method's grid has two (KL), not where it has one nominal view (ListMLE)
    assert labels == ["kl: λ = 0.25, logits", "kl: λ = 1, logits/4 (no value)", "listmle: λ = 0.25",
                      "listmle: λ = 1"]
    points = [(float(c.get_offsets()[0][0]), tuple(c.get_facecolors()[0])) for c in ax.collections]
    assert points == [(430.0, to_rgba("k")), (449.9, to_rgba("white")), (454.5, to_rgba("k"))]
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [446.0]
    fig.savefig(tmp_path / "t.png")
    with pytest.raises(ValueError, match="at least one method"):
        tuning_grid({})
