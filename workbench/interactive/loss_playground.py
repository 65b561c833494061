"""The loss playground widget (notebook 04): sliders over one cached batch -> the loss value, its gradients on the
student's scores and the order it asks for (the logic is in :mod:`workbench.interactive.playground`).

    LossPlayground(cached)
"""

from __future__ import annotations

import math
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from workbench.interactive.figure_view import SLOW, WIDE, figure_png, new_figure
from workbench.interactive.playground import (
    CachedBatch,
    DirectionResult,
    Objective,
    Settings,
    implied_order,
    objective,
    order_agreement,
    ordered_negatives,
)
from workbench.losses.cprd import VALIDITY_RULES

GRADIENTS = {"λ·CPRD": "distill", "ITC": "itc", "total": "total"}


def gradient_heatmap(result: DirectionResult, settings: Settings, rows: int = 16, term: str = "distill",
                     ax: Any = None) -> Any:
    """Heatmap of ``-∂L/∂s`` (red: the objective pushes s up) over the first ``rows`` queries' slates.

    Column 0 is each query's positive, then its negatives by student rank. ``term``: ``"distill"`` (λ x the
    distillation term's gradient), ``"itc"`` or ``"total"``. Outlined, numbered cells are the valid negatives
    with their target rank (the teacher's order CPRD teaches); the others are invalid; padding is blank.
    """
    ax = ax or new_figure(6, 4).subplots()
    grad = {"distill": result.lam * result.grad_distill, "itc": result.grad_itc, "total": result.grad}[term]
    pull = -grad[:rows].numpy()
    mask = result.batch.mask[:rows].numpy()
    vmax = max(float(np.abs(pull[mask]).max()) if mask.any() else 0.0, 1e-8)
    shown = np.ma.masked_array(pull, ~mask)
    im = ax.imshow(shown, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    ordered = ordered_negatives(result.batch, settings)[:rows]
    u = result.batch.teacher[:rows]
    for i in range(pull.shape[0]):
        cols = sorted(np.flatnonzero(ordered[i].numpy()), key=lambda j, i=i: (-float(u[i, j]), j))
        for rank, j in enumerate(cols, start=1):
            ax.text(j, i, str(rank), ha="center", va="center", fontsize=7)
            ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="k", lw=0.8))
    K = pull.shape[1] - 1
    ax.set_xticks(range(K + 1), ["pos"] + [str(j) for j in range(1, K + 1)], fontsize=7)
    ax.set_xlabel("slate entry (positive, then negatives by student rank)")
    ax.set_ylabel(f"query ({'image' if result.direction == 'i2t' else 'caption'})")
    name = {"distill": "λ·distill", "itc": "ITC", "total": "ITC + λ·distill"}[term]
    ax.figure.colorbar(im, ax=ax, label=f"-∂({name})/∂s   (red: pushed up)", shrink=0.8)
    ax.set_title(f"{result.direction}: per-pair gradient of {name}\n"
                 "outlined + numbered: valid negatives in their target order", fontsize=9)
    return ax


ORDER_COLUMNS = {"role": "role", "target": "target", "text": "candidate", "student": "s (student)",
                 "student_rank": "student rank", "teacher": "u (teacher)", "relevance": "relevance",
                 "pull": "-∂L/∂s (ITC + λ·CPRD)"}


def order_table_html(table: pd.DataFrame) -> str:
    """The implied target order of one query as an HTML table (a pandas Styler); invalid negatives greyed,
    the positive bold."""
    shown = table[list(ORDER_COLUMNS)].rename(columns=ORDER_COLUMNS)
    styles = {"invalid": "color:#999", "positive": "font-weight:bold"}
    styler = shown.style.hide(axis="index").apply(lambda row: [styles.get(row["role"], "")] * len(row), axis=1)
    styler = styler.format({"target": _whole, "student rank": _whole, "s (student)": "{:.2f}",
                            "u (teacher)": "{:.2f}", "relevance": "{:.2f}", "-∂L/∂s (ITC + λ·CPRD)": "{:+.4f}"})
    return styler.set_table_attributes("class='wb-order' style='font-size:12px'").to_html()


def _whole(x: float) -> str:
    """An integer-valued cell, empty where missing."""
    return "" if pd.isna(x) else str(int(x))


class LossPlayground:
    """Notebook 04's widget: sliders for K, T, the validity rule (threshold / m) and λ on one cached batch.

    Every change recomputes, without training: the loss value (``loss_html``, total in ``.wb-loss-total``), the
    per-pair gradient heatmap (``heatmap``) and the implied target order of one query (``order_html``).

    Attributes:
        controls: k, temperature, lam, validity, threshold, m, teacher_output, direction, query, gradient.
        result: the latest :class:`~workbench.interactive.playground.Objective`; ``value`` = its total.
    """

    def __init__(self, cached: CachedBatch, settings: Settings | None = None, *, rows: int = 16):
        self.cached, self.rows = cached, min(rows, cached.size)
        s = settings or Settings()
        kmax = cached.max_k()
        if s.k > kmax:
            s = s.with_(k=kmax)
        self.controls: dict[str, W.Widget] = {
            "k": W.IntSlider(value=s.k, min=1, max=kmax, description="K (hard negatives)", style=WIDE, **SLOW),
            "temperature": W.FloatLogSlider(value=s.temperature, base=10, min=-1, max=1, step=0.05,
                                            description="T", style=WIDE, **SLOW),
            "lam": W.FloatSlider(value=s.lam, min=0.0, max=4.0, step=0.1, description="λ", style=WIDE, **SLOW),
            "validity": W.Dropdown(options=list(VALIDITY_RULES), value=s.validity, description="validity rule",
                                   style=WIDE),
            "threshold": W.FloatSlider(value=s.threshold, description="threshold θ", style=WIDE, step=0.1, **SLOW),
            "m": W.IntSlider(value=s.m, min=1, max=kmax, description="M (top)", style=WIDE, **SLOW),
            "teacher_output": W.ToggleButtons(options=["logit", "probability"], value=s.teacher_output,
                                              description="teacher u as", style=WIDE),
            "direction": W.ToggleButtons(options=["i2t", "t2i"], value="i2t", description="direction", style=WIDE),
            "query": W.IntSlider(value=0, min=0, max=cached.size - 1, description="query", style=WIDE, **SLOW),
            "gradient": W.ToggleButtons(options=list(GRADIENTS), value="λ·CPRD", description="heatmap of",
                                        style=WIDE),
        }
        self._set_threshold_range(s.teacher_output)
        self.controls["threshold"].value = s.threshold
        self.loss_html = W.HTML()
        self.heatmap = W.Image(format="png", layout=W.Layout(max_width="640px"))
        self.order_html = W.HTML()
        c = self.controls
        self.widget = W.VBox([
            W.HBox([c["k"], c["temperature"], c["lam"]]),
            W.HBox([c["validity"], c["threshold"], c["m"]]),
            W.HBox([c["teacher_output"], c["direction"]]),
            self.loss_html,
            c["gradient"],
            self.heatmap,
            c["query"],
            self.order_html,
        ])
        self.result: Objective | None = None
        self._quiet = False
        c["teacher_output"].observe(self._convert_threshold, names="value")
        for w in c.values():
            w.observe(self.update, names="value")
        self.update()

    @property
    def settings(self) -> Settings:
        c = self.controls
        return Settings(k=c["k"].value, temperature=float(c["temperature"].value), validity=c["validity"].value,
                        threshold=float(c["threshold"].value), m=c["m"].value, lam=float(c["lam"].value),
                        teacher_output=c["teacher_output"].value)

    @property
    def value(self) -> float:
        """The displayed objective ``L_ITC + λ · L_CPRD``."""
        return self.result.total

    def _set_threshold_range(self, output: str) -> None:
        w = self.controls["threshold"]
        if output == "probability":
            lo, hi, step = 0.0, 1.0, 0.01
        else:
            u = self.cached.teacher_logit
            lo, hi, step = math.floor(float(u.min())), math.ceil(float(u.max())), 0.1
        w.min, w.max, w.step = min(lo, w.min), max(hi, w.max), step  # widen first so value never clamps early
        w.min, w.max = lo, hi

    def _convert_threshold(self, change: Any) -> None:
        """Keep the same cut when switching units: θ_prob = sigmoid(θ_logit)."""
        t = self.controls["threshold"].value
        new = 1 / (1 + math.exp(-t)) if change["new"] == "probability" else math.log(max(t, 1e-6) / max(1 - t, 1e-6))
        self._quiet = True  # the teacher_output observer that follows redraws once
        try:
            self._set_threshold_range(change["new"])
            self.controls["threshold"].value = new
        finally:
            self._quiet = False

    def update(self, change: Any = None) -> None:
        """Recompute and redraw everything from the controls."""
        if self._quiet:
            return
        c, s = self.controls, self.settings
        c["threshold"].layout.display = "" if s.validity == "threshold" else "none"
        c["m"].layout.display = "" if s.validity == "top" else "none"
        self.result = objective(self.cached, s)
        res = self.result.directions[c["direction"].value]
        self.loss_html.value = self._loss_text(s)
        ax = gradient_heatmap(res, s, rows=self.rows, term=GRADIENTS[c["gradient"].value],
                              ax=new_figure(6.4, 4.4).subplots())
        self.heatmap.value = figure_png(ax.figure)
        self.order_html.value = order_table_html(implied_order(self.cached, s, res, c["query"].value))

    def _loss_text(self, s: Settings) -> str:
        r = self.result
        per = ", ".join(f"{d} {float(ordered_negatives(x.batch, s).sum(1).float().mean()):.2f}"
                        for d, x in r.directions.items())
        agree = order_agreement(r.directions[self.controls["direction"].value], s)
        agree_text = "–" if math.isnan(agree) else f"{100 * agree:.0f}%"
        return (f"<div class='wb-loss'>L = ITC <b>{r.itc:.4f}</b> + λ {r.lam:.2f} × CPRD <b>{r.distill:.4f}</b> = "
                f"<b class='wb-loss-total'>{r.total:.4f}</b> &nbsp;|&nbsp; valid negatives per query: {per} "
                f"&nbsp;|&nbsp; student already agrees with the teacher on {agree_text} of valid pairs</div>")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
