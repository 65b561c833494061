"""The loss playground widget (notebook 04): any registered loss, its hyperparameters as sliders, over one cached
batch -> the loss value, its gradients on the student's scores and the order it asks for (the logic is in
:mod:`workbench.interactive.playground`).

    LossPlayground(cached)
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Mapping
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from workbench.interactive.figure_view import LABEL, SLIDER, SLIDER_WIDTH, WIDE, figure_png, mark_smoke, new_figure
from workbench.interactive.playground import (
    CachedBatch,
    DirectionResult,
    Objective,
    Settings,
    implied_order,
    objective,
    order_agreement,
    ordered_negatives,
    why_empty,
)
from workbench.losses import HParam, Rule, list_losses, loss_spec
from workbench.losses.cprd import VALIDITY_RULES, rule_parameters

GRADIENTS = {"λ·distill": "distill", "ITC": "itc", "total": "total"}


def gradient_heatmap(result: DirectionResult, settings: Settings, rows: int = 16, term: str = "distill",
                     ax: Any = None) -> Any:
    """Heatmap of ``-∂L/∂s`` (red: the objective pushes s up) over the first ``rows`` queries' slates.

    Column 0 is each query's positive, then its negatives by student rank. ``term``: ``"distill"`` (λ x the
    distillation term's gradient), ``"itc"`` or ``"total"``. Outlined, numbered cells are the negatives the loss
    orders (CPRD: the valid ones) with their target rank; padding is blank. When the term has no gradient on these
    rows the axes say why (:func:`why_empty`) instead of showing an empty map.
    """
    ax = ax or new_figure(6, 4).subplots()
    grad = {"distill": result.lam * result.grad_distill, "itc": result.grad_itc, "total": result.grad}[term]
    pull = -grad[:rows].numpy()
    mask = result.batch.mask[:rows].numpy()
    name = {"distill": f"λ·{settings.loss}", "itc": "ITC", "total": f"ITC + λ·{settings.loss}"}[term]
    empty = why_empty(result, settings, rows) if term == "distill" else None
    if empty is not None or not np.abs(pull[mask]).max(initial=0.0) > 0:
        return _empty_heatmap(ax, empty or f"{name} has no gradient on these queries (λ = {result.lam:g}?)")
    vmax = float(np.abs(pull[mask]).max())
    im = ax.imshow(np.ma.masked_array(pull, ~mask), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    _outline_ordered(ax, result, settings, rows)
    K = pull.shape[1] - 1
    ax.set_xticks(range(K + 1), ["pos"] + [str(j) for j in range(1, K + 1)], fontsize=7)
    ax.set_xlabel("slate entry (positive, then negatives by student rank)")
    ax.set_ylabel(f"query ({'image' if result.direction == 'i2t' else 'caption'})")
    ax.figure.colorbar(im, ax=ax, label=f"-∂({name})/∂s   (red: pushed up)", shrink=0.8)
    ax.set_title(f"{result.direction}: per-pair gradient of {name}\n"
                 "outlined + numbered: negatives the loss orders, in their target order", fontsize=9)
    return ax


def _outline_ordered(ax: Any, result: DirectionResult, settings: Settings, rows: int) -> None:
    """Number and outline each query's ordered negatives in the teacher's order (ties: lower column first)."""
    ordered = ordered_negatives(result.batch, settings)[:rows]
    u = result.batch.teacher[:rows]
    for i in range(ordered.shape[0]):
        cols = sorted(np.flatnonzero(ordered[i].numpy()), key=lambda j, i=i: (-float(u[i, j]), j))
        for rank, j in enumerate(cols, start=1):
            ax.text(j, i, str(rank), ha="center", va="center", fontsize=7)
            ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="k", lw=0.8))


def _empty_heatmap(ax: Any, reason: str) -> Any:
    """The axes of a heatmap with nothing to show: the reason in words, no colour bar."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, textwrap.fill(reason, 60), ha="center", va="center", fontsize=10, wrap=True,
            transform=ax.transAxes, bbox={"boxstyle": "round", "facecolor": "#fff6e0", "edgecolor": "#c90"})
    return ax


ORDER_COLUMNS = {"role": "role", "target": "target", "text": "candidate", "student": "s (student)",
                 "student_rank": "student rank", "teacher": "u (teacher)", "relevance": "relevance",
                 "pull": "-∂L/∂s (ITC + λ·distill)"}


def order_table_html(table: pd.DataFrame) -> str:
    """The implied target order of one query as an HTML table (a pandas Styler); invalid negatives greyed,
    the positive bold."""
    shown = table[list(ORDER_COLUMNS)].rename(columns=ORDER_COLUMNS)
    styles = {"invalid": "color:#999", "positive": "font-weight:bold"}
    styler = shown.style.hide(axis="index").apply(lambda row: [styles.get(row["role"], "")] * len(row), axis=1)
    styler = styler.format({"target": _whole, "student rank": _whole, "s (student)": "{:.2f}",
                            "u (teacher)": "{:.2f}", "relevance": "{:.2f}", "-∂L/∂s (ITC + λ·distill)": "{:+.4f}"})
    return styler.set_table_attributes("class='wb-order' style='font-size:12px'").to_html()


def _whole(x: float) -> str:
    """An integer-valued cell, empty where missing."""
    return "" if pd.isna(x) else str(int(x))


class LossPlayground:
    """Notebook 04's widget: any registered loss (a dropdown) as the distillation term on one cached batch, its
    hyperparameters as sliders built from the registry (``param_control``), plus K, λ and the teacher's units.

    Every change recomputes, without training: the loss value (``loss_html``, total in ``.wb-loss-total``), the
    per-pair gradient heatmap (``heatmap``; or, when the term does nothing on the shown queries, the reason in
    words in ``empty_html``) and the implied target order of one query (``order_html``).

    Attributes:
        controls: loss, k, lam, teacher_output, direction, gradient, query, and one per hyperparameter of the
            chosen loss (rebuilt when the loss changes).
        result: the latest :class:`~workbench.interactive.playground.Objective`; ``value`` = its total.

    ``smoke=True`` marks the heatmap with ``SMOKE_NOTE`` (its numbers only show that the code runs).
    """

    def __init__(self, cached: CachedBatch, settings: Settings | None = None, *, rows: int = 16,
                 smoke: bool = False):
        self.cached, self.rows, self.smoke = cached, min(rows, cached.size), smoke
        s = settings or Settings()
        self.kmax = cached.max_k()
        s = s.with_(k=min(s.k, self.kmax))
        self.fixed = self._fixed_controls(s)
        self.params_box = W.HBox(layout=W.Layout(flex_flow="row wrap"))
        self.param_controls: dict[str, W.Widget] = {}
        self.loss_html, self.empty_html, self.order_html = W.HTML(), W.HTML(), W.HTML()
        self.heatmap = W.Image(format="png", layout=W.Layout(max_width="640px"))
        self.widget = self._layout()
        self.result: Objective | None = None
        self._quiet = False
        self.fixed["loss"].observe(self._loss_changed, names="value")
        self.fixed["teacher_output"].observe(self._convert_threshold, names="value")
        for w in self.fixed.values():
            w.observe(self.update, names="value")
        self._build_params(s.loss, s.params)
        self.update()

    def _fixed_controls(self, s: Settings) -> dict[str, W.Widget]:
        toggle = {"style": {**WIDE, "button_width": "104px"}, "layout": {"width": "auto", "margin": "0 24px 0 0"}}
        return {
            "loss": W.Dropdown(options=list(list_losses()), value=s.loss, description="distillation loss",
                               layout=W.Layout(width=SLIDER_WIDTH), style=LABEL),
            "k": W.IntSlider(value=s.k, min=1, max=self.kmax, description="K (hard negatives)", **SLIDER),
            "lam": W.FloatSlider(value=s.lam, min=0.0, max=4.0, step=0.1, description="λ", **SLIDER),
            "teacher_output": W.ToggleButtons(options=["logit", "probability"], value=s.teacher_output,
                                              description="teacher u as", **toggle),
            "direction": W.ToggleButtons(options=["i2t", "t2i"], value="i2t", description="direction", **toggle),
            "gradient": W.ToggleButtons(options=list(GRADIENTS), value="λ·distill", description="heatmap of",
                                        **toggle),
            "query": W.IntSlider(value=0, min=0, max=self.cached.size - 1, description="query", **SLIDER),
        }

    def _layout(self) -> W.VBox:
        c = self.fixed
        return W.VBox([
            W.HBox([c["loss"], c["k"], c["lam"]], layout=W.Layout(flex_flow="row wrap")),
            self.params_box,
            W.HBox([c["teacher_output"], c["direction"]], layout=W.Layout(flex_flow="row wrap")),
            self.loss_html,
            c["gradient"],
            self.empty_html,
            self.heatmap,
            c["query"],
            self.order_html,
        ])

    @property
    def controls(self) -> dict[str, W.Widget]:
        """Every control by name: the fixed ones and the current loss's hyperparameters."""
        return {**self.fixed, **self.param_controls}

    @property
    def settings(self) -> Settings:
        c = self.fixed
        params = {k: w.value for k, w in self.param_controls.items()}
        return Settings(k=c["k"].value, lam=float(c["lam"].value), teacher_output=c["teacher_output"].value,
                        loss=c["loss"].value, params=params)

    @property
    def value(self) -> float:
        """The displayed objective ``L_ITC + λ · L_distill`` (each the mean over both directions)."""
        return self.result.total

    def _build_params(self, loss: str, values: Mapping[str, Any]) -> None:
        """One control per hyperparameter of ``loss`` (``param_control``), starting at ``values`` or the defaults."""
        self.param_controls = {}
        for name, p in loss_spec(loss).params.items():
            w = param_control(p, values.get(name, p.default), kmax=self.kmax,
                              teacher_range=self._teacher_range(self.fixed["teacher_output"].value))
            w.observe(self.update, names="value")
            self.param_controls[name] = w
        self.params_box.children = list(self.param_controls.values())

    def _loss_changed(self, change: Any) -> None:
        self._quiet = True  # the loss observer that follows redraws once
        try:
            self._build_params(change["new"], {})
        finally:
            self._quiet = False

    def _teacher_range(self, output: str) -> tuple[float, float, float]:
        """(low, high, step) of a threshold in the teacher's units."""
        if output == "probability":
            return 0.0, 1.0, 0.01
        u = self.cached.teacher_logit
        return math.floor(float(u.min())), math.ceil(float(u.max())), 0.1

    def _convert_threshold(self, change: Any) -> None:
        """Keep the same cut when switching units: θ_prob = sigmoid(θ_logit)."""
        w = self.param_controls.get("threshold")
        if w is None:
            return
        t = w.value
        new = 1 / (1 + math.exp(-t)) if change["new"] == "probability" else math.log(max(t, 1e-6) / max(1 - t, 1e-6))
        lo, hi, step = self._teacher_range(change["new"])
        self._quiet = True  # the teacher_output observer that follows redraws once
        try:
            w.min, w.max, w.step = min(lo, w.min), max(hi, w.max), step  # widen first so value never clamps early
            w.value = min(max(new, lo), hi)
            w.min, w.max = lo, hi
        finally:
            self._quiet = False

    def _show_rule_parameters(self, s: Settings) -> None:
        """Show only the validity-rule parameters (threshold, m, ...) that the chosen rule reads."""
        if "validity" not in s.params:
            return
        used = rule_parameters(VALIDITY_RULES[s.params["validity"]], **s.params)
        for name in RULE_PARAMETERS & self.param_controls.keys():
            self.param_controls[name].layout.display = "" if name in used else "none"

    def update(self, change: Any = None) -> None:
        """Recompute and redraw everything from the controls."""
        if self._quiet:
            return
        c, s = self.fixed, self.settings
        self._show_rule_parameters(s)
        self.result = objective(self.cached, s)
        res = self.result.directions[c["direction"].value]
        self.loss_html.value = self._loss_text(s, res)
        empty = why_empty(res, s, self.rows) if GRADIENTS[c["gradient"].value] == "distill" else None
        self.empty_html.value = "" if empty is None else f"<div class='wb-empty'>{html.escape(empty)}</div>"
        ax = gradient_heatmap(res, s, rows=self.rows, term=GRADIENTS[c["gradient"].value],
                              ax=new_figure(6.4, 4.4).subplots())
        self.heatmap.value = figure_png(mark_smoke(ax.figure) if self.smoke else ax.figure)
        self.order_html.value = order_table_html(implied_order(self.cached, s, res, c["query"].value))

    def _loss_text(self, s: Settings, res: DirectionResult) -> str:
        r = self.result
        per = ", ".join(f"{d} {float(ordered_negatives(x.batch, s).sum(1).float().mean()):.2f}"
                        for d, x in r.directions.items())
        agree = order_agreement(res, s)
        agree_text = ("no pair of ordered negatives to compare" if math.isnan(agree) else
                      f"student already agrees with the teacher on {100 * agree:.0f}% of ordered pairs "
                      f"({res.direction})")
        return (f"<div class='wb-loss'>L = ITC <b>{r.itc:.4f}</b> + λ {r.lam:.2f} × {s.loss} <b>{r.distill:.4f}</b> "
                f"= <b class='wb-loss-total'>{r.total:.4f}</b> <i>(each the mean of i2t and t2i; {res.direction} alone:"
                f" ITC {res.itc:.4f}, {s.loss} {res.distill:.4f})</i><br>negatives the loss orders, per query: {per}"
                f" &nbsp;|&nbsp; {agree_text}</div>")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


RULE_PARAMETERS = frozenset({"threshold", "m"})
"""Hyperparameters that belong to a validity rule: shown only while the chosen rule reads them."""


def param_control(p: HParam, value: Any, *, kmax: int, teacher_range: tuple[float, float, float]) -> W.Widget:
    """A control for one registered hyperparameter, from its declared type and range (``HParam``, ``Rule``).

    choices (``Literal`` or ``one_of``) -> dropdown; bool -> checkbox; int -> slider from the rule's low bound up to
    max(K, 2 x default); a float ``> 0`` -> log slider over a decade either side of the default; ``in_range`` ->
    that range; ``threshold`` -> the teacher's score range (``teacher_range``); other floats -> default ± 5; else
    a text box.
    """
    rule = p.rule
    choices = p.choices or (tuple(rule.choices) if rule is not None and rule.choices is not None else None)
    if choices is not None:
        return W.Dropdown(options=list(choices), value=value, description=p.name, layout=W.Layout(width=SLIDER_WIDTH),
                          style=LABEL)
    if p.kind is bool:
        return W.Checkbox(value=bool(value), description=p.name, indent=False)
    if p.kind is int:
        low = int(rule.low) if rule is not None and rule.low is not None else 0
        high = int(rule.high) if rule is not None and rule.high is not None else max(kmax, 2 * int(p.default), low + 1)
        return W.IntSlider(value=min(max(value, low), high), min=low, max=high, description=p.name, **SLIDER)
    if p.kind is float:
        return _float_control(p, float(value), rule, teacher_range)
    return W.Text(value="" if value is None else str(value), description=p.name, style=LABEL)


def _float_control(p: HParam, value: float, rule: Rule | None, teacher_range: tuple[float, float, float]) -> W.Widget:
    if rule is not None and rule.low == 0.0 and rule.strict_low and rule.high is None:
        centre = math.log10(p.default)
        return W.FloatLogSlider(value=value, base=10, min=centre - 1, max=centre + 1, step=0.05,
                                description=p.name, **SLIDER)
    if p.name == "threshold":
        low, high, step = teacher_range
    elif rule is not None and rule.low is not None and rule.high is not None:
        low, high, step = rule.low, rule.high, (rule.high - rule.low) / 100
    else:
        low = rule.low if rule is not None and rule.low is not None else p.default - 5
        high, step = low + 10 if rule is not None and rule.low is not None else p.default + 5, 0.1
    return W.FloatSlider(value=min(max(value, low), high), min=low, max=high, step=step, description=p.name,
                         **SLIDER)
