"""The score explorer (notebook 01): one model's scores on the evaluation slates by direction, group (positives,
hard, easy negatives) and teacher view (logit, probability, tempered), as histograms and statistics.

    ScoreExplorer(slates, student_scores)
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from workbench.findings.distributions import (
    DESCRIBE_COLUMNS,
    TEACHER,
    VIEWS,
    describe,
    grouped_values,
    per_query_stats,
    score_view,
    slate_labels,
)
from workbench.findings.figures import GROUP_COLOURS
from workbench.interactive.figure_view import SLOW, WIDE, FigureView, new_figure


def distribution_figure(values: Mapping[str, np.ndarray], title: str, bins: int = 40) -> Figure:
    """Densities of each group's scores (left; legend: n and skewness) and their normal Q-Q plot (right).

    Args:
        values: ``{group: float [n]}`` (empty groups are skipped).
        title: the figure's title; bins: histogram bins shared by the groups.
    """
    fig = new_figure(9, 3.4)
    ax_hist, ax_qq = fig.subplots(1, 2)
    data = {g: np.asarray(v, dtype=float) for g, v in values.items() if np.size(v)}
    edges = np.histogram_bin_edges(np.concatenate(list(data.values())), bins=bins) if data else bins
    for i, (group, v) in enumerate(data.items()):
        colour = GROUP_COLOURS.get(group, f"C{i}")
        spread = v.size > 2 and v.std() > 0
        skew = f"{stats.skew(v):.2f}" if spread else "–"
        ax_hist.hist(v, bins=edges, density=True, alpha=0.45, color=colour, label=f"{group} (n={v.size}, skew {skew})")
        if spread:
            m = min(200, v.size)
            probs = (np.arange(1, m + 1) - 0.5) / m
            z = (np.quantile(v, probs) - v.mean()) / v.std(ddof=1)
            ax_qq.plot(stats.norm.ppf(probs), z, ".", ms=3, color=colour, label=group)
    ax_qq.plot([-3.5, 3.5], [-3.5, 3.5], color="black", lw=0.8, ls="--")
    ax_hist.set(xlabel="score", ylabel="density", title="density per group")
    ax_qq.set(xlabel="normal quantile", ylabel="standardised quantile", title="normal Q-Q (diagonal = normal)")
    for ax in (ax_hist, ax_qq):
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        if ax.lines or ax.patches:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


class ScoreExplorer:
    """Notebook 01's explorer: the distribution of one model's scores over the evaluation slates, by group.

    Controls: ``model`` (the teacher, or a student by name), ``direction``, which groups to show (``positive``,
    ``hard``, ``easy``), the teacher's ``view`` (logit / probability / tempered, shown for the teacher only), the
    tempered view's ``temperature`` (shown for that view only) and ``bins``. Every change redraws the figure
    (densities + normal Q-Q plot) and the statistics (``stats``: moments, mass near the ends, Shapiro-Wilk W per
    shown group, and the per-query softmax a KL loss would match); sliders act on release.

    Args:
        slates: ``{direction: EvalSlates}``.
        students: ``{direction: {name: float [Q, L]}}``: each student's logits on that direction's slate entries
            (:func:`~workbench.interactive.explore.slate_scores`); the same names in every direction.
        temperature: the tempered view's starting divisor.

    Attributes:
        controls, view (the :class:`FigureView`), stats (HTML), widget.
    """

    def __init__(self, slates: Mapping[str, Any], students: Mapping[str, Mapping[str, Any]], *,
                 temperature: float = 4.0):
        if not slates:
            raise ValueError("slates must hold at least one direction, got none")
        self.slates = dict(slates)
        self.students = {d: dict(students.get(d, {})) for d in self.slates}
        names = list(next(iter(self.students.values())))
        if any(list(s) != names for s in self.students.values()):
            raise ValueError(f"students must name the same models in every direction, got "
                             f"{ {d: list(s) for d, s in self.students.items()} }")
        controls = {
            "model": W.Dropdown(options=[TEACHER, *names], value=TEACHER, description="model"),
            "direction": W.ToggleButtons(options=list(self.slates), description="direction", style=WIDE),
            "view": W.ToggleButtons(options=list(VIEWS), value="probability", description="teacher score as",
                                    style=WIDE),
            "positive": W.Checkbox(value=True, description="positives", indent=False),
            "hard": W.Checkbox(value=True, description="hard negatives", indent=False),
            "easy": W.Checkbox(value=True, description="easy negatives", indent=False),
            "temperature": W.FloatLogSlider(value=temperature, base=10, min=-1, max=1.5, step=0.05,
                                            description="T (tempered)", style=WIDE, **SLOW),
            "bins": W.IntSlider(value=40, min=5, max=120, description="bins", style=WIDE, **SLOW),
        }
        self.stats = W.HTML()
        self.view = FigureView(self._draw, controls, columns=3)
        self.controls = self.view.controls
        for w in self.controls.values():
            w.observe(self._refresh, names="value")
        self.widget = W.VBox([self.view.widget, self.stats])
        self._refresh()

    def _groups(self, values: Mapping[str, Any]) -> list[str]:
        return [g for g in ("positive", "hard", "easy") if values[g]]

    def _scores(self, v: Mapping[str, Any]) -> tuple[np.ndarray, tuple[float, float] | None, str]:
        return score_view(self.slates[v["direction"]], self.students[v["direction"]], v["model"], v["view"],
                          v["temperature"])

    def _draw(self, **v: Any) -> Figure:
        groups = self._groups(v)
        if not groups:
            raise ValueError("tick at least one group: positives, hard negatives or easy negatives")
        x, _, label = self._scores(v)
        values = grouped_values(x, slate_labels(self.slates[v["direction"]]))
        return distribution_figure({g: values[g] for g in groups}, f"{label} · {v['direction']}", v["bins"])

    def _refresh(self, change: Any = None) -> None:
        """Show only the controls that apply, and recompute the statistics."""
        v = {name: w.value for name, w in self.controls.items()}
        teacher = v["model"] == TEACHER
        self.controls["view"].layout.display = "" if teacher else "none"
        self.controls["temperature"].layout.display = "" if teacher and v["view"] == "tempered" else "none"
        sl = self.slates[v["direction"]]
        x, bounds, label = self._scores(v)
        values = grouped_values(x, slate_labels(sl))
        rows = {g: {c: describe(values[g], bounds=bounds).get(c) for c in DESCRIBE_COLUMNS}
                for g in self._groups(v) if values[g].size}
        table = pd.DataFrame.from_dict(rows, orient="index").to_html(
            float_format=lambda f: f"{f:.3g}", classes="wb-stats", na_rep="–", border=0)
        soft = per_query_stats(x, sl.valid.numpy())
        self.stats.value = (
            f"<div class='wb-explorer'><b>{html.escape(label)}</b>, {v['direction']}: {table}"
            f"softmax over each query's slate (what a KL loss matches): normalised entropy "
            f"<b>{soft['entropy']['mean']:.3f}</b> (1 = uniform), top-1 mass <b>{soft['top_mass']['mean']:.3f}</b>"
            "</div>")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
