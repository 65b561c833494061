"""Notebook widgets (the only module importing ipywidgets): controls that redraw figures, the loss playground, a
training panel with live curves and a stop button, the score-distribution explorer and the per-query viewer.

Figures are rendered with matplotlib's Agg backend into ``ipywidgets.Image`` PNGs: this works the same in
JupyterLab, in a headless test (``widget.value`` holds the bytes) and from a training thread. Anything slow
redraws only on release (``continuous_update=False``) or on a button.

    from workbench.analysis.widgets import FigureView, LossPlayground, TrainPanel, loss_param_controls

    view = FigureView(draw, {"k": IntSlider(...)})   # draw(**values) -> matplotlib Figure; redrawn on change
    LossPlayground(cached)                           # notebook 04: sliders -> loss value, gradients, target order
    TrainPanel(workspace, profile("quick"), "runs/notebooks")   # notebook 03: pick terms, train, stop
    ScoreExplorer(slates, student_scores)            # notebook 01: model / direction / groups / teacher view
    QueryViewer(slates, split)                       # notebook 02: one query, its candidates, three orders
"""

from __future__ import annotations

import html
import io
import math
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy import stats

from workbench.analysis.agreement import PAIRS, kendall_tau_rows
from workbench.analysis.distributions import describe, grouped_values, per_query_stats
from workbench.analysis.explore import (
    DESCRIBE_COLUMNS,
    ORDERS,
    TEACHER,
    VIEWS,
    WINDOWS,
    describe_item,
    query_frame,
    query_text,
    score_view,
    slate_labels,
    window_mask,
)
from workbench.analysis.finding_plots import GROUP_COLOURS
from workbench.analysis.playground import (
    CachedBatch,
    DirectionResult,
    Objective,
    Settings,
    implied_order,
    objective,
    order_agreement,
    ordered_negatives,
)
from workbench.losses import loss_spec
from workbench.losses.cprd import VALIDITY_RULES
from workbench.training.config import ITC, FitConfig, LossTerm
from workbench.training.loop import StopTraining

SLOW = {"continuous_update": False}
WIDE = {"description_width": "initial"}


# ----------------------------------------------------------------------------------------------- basics


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure (rendered off-screen; the figure is not shown or kept)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def new_figure(width: float, height: float) -> Figure:
    """A figure outside pyplot's registry (no inline echo, no leak when redrawn many times)."""
    return Figure(figsize=(width, height), layout="constrained")


def loss_param_controls(name: str, exclude: Sequence[str] = ()) -> dict[str, W.Widget]:
    """One widget per hyperparameter of registered loss ``name``, from ``loss_spec`` (choices -> dropdown,
    bool -> checkbox, int/float -> number box, else text), each starting at the default."""
    out = {}
    for key, p in loss_spec(name).params.items():
        if key in exclude:
            continue
        if p.choices is not None:
            w = W.Dropdown(options=list(p.choices), value=p.default, description=key)
        elif p.kind is str and key == "validity":  # CPRD's rule: a live set of names
            w = W.Dropdown(options=list(VALIDITY_RULES), value=p.default, description=key)
        elif p.kind is bool:
            w = W.Checkbox(value=bool(p.default), description=key, indent=False)
        elif p.kind is int:
            w = W.IntText(value=p.default, description=key)
        elif p.kind is float:
            w = W.FloatText(value=p.default, description=key)
        else:
            w = W.Text(value="" if p.default is None else str(p.default), description=key)
        w.style.description_width = "initial"
        w.layout.width = "200px"
        if p.rule is not None:
            w.tooltip = f"{key} {p.rule.text}"
        out[key] = w
    return out


class FigureView:
    """Controls plus a figure redrawn whenever one of them changes: ``draw(**values) -> Figure``.

    Attributes:
        controls: name -> widget (their ``value`` s are passed to ``draw`` by name).
        image: the ``ipywidgets.Image`` holding the PNG; error: an HTML line showing a failed draw.
        widget: the whole box (displayed when the object is the last value of a cell).
    """

    def __init__(self, draw: Callable[..., Figure], controls: Mapping[str, W.Widget], *, columns: int = 3,
                 dpi: int = 100):
        self.draw, self.controls, self.dpi = draw, dict(controls), dpi
        self.image = W.Image(format="png")
        self.error = W.HTML()
        rows = [W.HBox(list(self.controls.values())[i : i + columns]) for i in range(0, len(self.controls), columns)]
        self.widget = W.VBox([*rows, self.error, self.image])
        for w in self.controls.values():
            w.observe(self.update, names="value")
        self.update()

    @property
    def values(self) -> dict[str, Any]:
        return {name: w.value for name, w in self.controls.items()}

    def update(self, change: Any = None) -> None:
        """Redraw (called on every control change); a failing draw shows its error instead of raising."""
        try:
            self.image.value = figure_png(self.draw(**self.values), self.dpi)
            self.error.value = ""
        except (ValueError, TypeError) as err:
            self.error.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


# ------------------------------------------------------------------------------------------ loss playground


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


def order_table_html(table: pd.DataFrame) -> str:
    """The implied target order of one query as an HTML table; invalid negatives greyed."""
    head = ("<tr><th>role</th><th>target</th><th>candidate</th><th>s (student)</th><th>student rank</th>"
            "<th>u (teacher)</th><th>relevance</th><th>-∂L/∂s (ITC + λ·CPRD)</th></tr>")
    body = []
    for r in table.itertuples():
        style = "color:#999" if r.role == "invalid" else ("font-weight:bold" if r.role == "positive" else "")
        target = "" if pd.isna(r.target) else int(r.target)
        rank = "" if pd.isna(r.student_rank) else int(r.student_rank)
        body.append(
            f"<tr style='{style}'><td>{r.role}</td><td>{target}</td><td>{html.escape(r.text)}</td>"
            f"<td>{r.student:.2f}</td><td>{rank}</td><td>{r.teacher:.2f}</td><td>{r.relevance:.2f}</td>"
            f"<td>{r.pull:+.4f}</td></tr>"
        )
    return "<table class='wb-order' style='font-size:12px'>" + head + "".join(body) + "</table>"


class LossPlayground:
    """Notebook 04's widget: sliders for K, T, the validity rule (threshold / m) and λ on one cached batch.

    Every change recomputes, without training: the loss value (``loss_html``, total in ``.wb-loss-total``), the
    per-pair gradient heatmap (``heatmap``) and the implied target order of one query (``order_html``).

    Attributes:
        controls: k, temperature, lam, validity, threshold, m, teacher_output, direction, query, gradient.
        result: the latest :class:`~workbench.analysis.playground.Objective`; ``value`` = its total.
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


# -------------------------------------------------------------------------------------------- train panel


def curves_figure(steps: Sequence[Mapping[str, float]], evals: Sequence[Mapping[str, float]],
                  total_steps: int | None = None) -> Figure:
    """Training losses per step (left) and validation R@1, semantic protocol, per evaluation (right)."""
    fig = new_figure(9, 3.2)
    ax_loss, ax_val = fig.subplots(1, 2)
    keys = [k for k in (steps[0] if steps else {}) if k.endswith("_loss") or k == "loss"]
    for key in keys:
        ax_loss.plot([r["step"] for r in steps], [r[key] for r in steps], lw=1, label=key)
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training loss (weighted terms)", fontsize=9)
    for key in ("val_semantic_r1_i2t", "val_semantic_r1_t2i"):
        pts = [(r["step"], r[key]) for r in evals if key in r]
        if pts:
            ax_val.plot(*zip(*pts, strict=True), marker="o", label=key.replace("val_semantic_r1_", "R@1 "))
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("%")
    ax_val.set_title("validation retrieval (semantic)", fontsize=9)
    for ax in (ax_loss, ax_val):
        if total_steps:
            ax.set_xlim(0, total_steps)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return fig


class TermControls:
    """One loss term's row in the train panel: enabled, weight, hyperparameters."""

    def __init__(self, name: str, enabled: bool, weight: float = 1.0):
        self.name = name
        self.enabled = W.Checkbox(value=enabled, description=name, indent=False, layout=W.Layout(width="110px"))
        self.weight = W.FloatText(value=weight, description="weight", layout=W.Layout(width="140px"))
        self.params = {} if name == ITC else loss_param_controls(name)
        self.widget = W.HBox([self.enabled, self.weight, *self.params.values()])

    def term(self) -> LossTerm | None:
        if not self.enabled.value:
            return None
        params = {k: w.value for k, w in self.params.items()}
        return LossTerm(self.name, float(self.weight.value), params)


class TrainPanel:
    """Train a student from a notebook: pick loss terms and weights, watch live curves, stop at any time.

    The run is written by :func:`~workbench.analysis.runs.train_student_run`, exactly like ``python -m workbench
    train`` (config.json, history.json, metrics.json, checkpoint/), to ``out_root/<time>-<terms>``. Training
    runs in a background thread so the kernel stays free for the Stop button; ``start(thread=False)`` runs it
    in the caller (headless use). Stopping ends the run cleanly at the current step (see ``StopTraining``).

    Attributes:
        terms: loss name -> :class:`TermControls`; options: steps, batch, k, seed widgets.
        train_button, stop_button, status (HTML), curves (Image); history (evaluation rows), steps (step rows),
        run_dir, metrics (after the run), error (an exception the run raised, if any).
    """

    def __init__(self, ws: Any, base: FitConfig, out_root: str | Path, *,
                 losses: Sequence[str] = ("cprd", "listmle", "ranknet", "kl"), rerank: bool = False,
                 live: bool = True, redraw_seconds: float = 1.0, train: Callable[..., dict] | None = None):
        if train is None:
            from workbench.analysis.runs import train_student_run as train
        self.ws, self.base, self.out_root, self.rerank = ws, base, Path(out_root), rerank
        self.live, self.redraw_seconds, self._train = live, redraw_seconds, train
        initial = {t.name: t for t in base.losses}
        self.terms = {name: TermControls(name, name in initial, initial[name].weight if name in initial else 1.0)
                      for name in dict.fromkeys([ITC, *losses])}
        for name, t in initial.items():
            for key, value in t.params.items():
                self.terms[name].params[key].value = value
        self.options = {
            "steps": W.BoundedIntText(value=base.steps, min=1, max=10**6, description="steps"),
            "batch": W.BoundedIntText(value=base.batch, min=2, max=4096, description="batch"),
            "k": W.BoundedIntText(value=base.k, min=1, max=1024, description="K"),
            "seed": W.IntText(value=base.seed, description="seed"),
        }
        self.train_button = W.Button(description="Train", button_style="success", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.train_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.status = W.HTML("ready")
        self.curves = W.Image(format="png")
        self.widget = W.VBox([*(t.widget for t in self.terms.values()), W.HBox(list(self.options.values())),
                              W.HBox([self.train_button, self.stop_button, self.status]), self.curves])
        self.history: list[dict] = []
        self.steps: list[dict] = []
        self.run_dir: Path | None = None
        self.metrics: dict | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = 0.0

    def config(self) -> FitConfig:
        """The FitConfig the panel's controls describe (raises naming the bad value)."""
        terms = tuple(t for t in (c.term() for c in self.terms.values()) if t is not None)
        if not terms:
            raise ValueError("pick at least one loss term (tick itc and/or a distillation loss)")
        values = {k: w.value for k, w in self.options.items()}
        return self.base.with_(losses=terms, **values)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, thread: bool = True) -> None:
        """Start a run with the current settings (the Train button); a bad setting shows in ``status``."""
        if self.running:
            return
        try:
            cfg = self.config()
        except (ValueError, TypeError) as err:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        slug = "+".join(t.name for t in cfg.losses)
        self.run_dir = self.out_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
        self.history, self.steps, self.metrics, self.error = [], [], None, None
        self._stop.clear()
        self.train_button.disabled, self.stop_button.disabled = True, False
        self.status.value = f"training {slug} for {cfg.steps} steps…"
        if thread:
            self._thread = threading.Thread(target=self._run, args=(cfg,), daemon=True)
            self._thread.start()
        else:
            self._run(cfg)

    def stop(self) -> None:
        """Ask the run to stop after the current step (the Stop button)."""
        self._stop.set()
        self.status.value = "stopping after this step…"

    def join(self, timeout: float | None = None) -> dict | None:
        """Wait for the run; re-raise its error; return its metrics."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.metrics

    def wait_for_steps(self, n: int, timeout: float = 120.0) -> None:
        """Block until ``n`` steps have run (or the run ended): for scripted demos of the stop button."""
        end = time.monotonic() + timeout
        while len(self.steps) < n and self.running and time.monotonic() < end:
            time.sleep(0.05)

    def _run(self, cfg: FitConfig) -> None:
        try:
            self.metrics = self._train(self.ws, cfg, self.run_dir, rerank=self.rerank,
                                       step_callbacks=(self._on_step,), callbacks=(self._on_eval,))
            done = self.history[-1]["step"] if self.history else 0
            stopped = " (stopped)" if done < cfg.steps else ""
            sem = self.metrics["retrieval"]["semantic"]
            self.status.value = (f"done at step {done}/{cfg.steps}{stopped}: test R@1 i2t {sem['r1_i2t']:.1f}, "
                                 f"t2i {sem['r1_t2i']:.1f}, RSUM {sem['rsum']:.1f}; saved to {self.run_dir}")
        except Exception as err:  # shown in the panel; join() re-raises it
            self.error = err
            self.status.value = f"<span style='color:#b00'>failed: {html.escape(repr(err))}</span>"
        finally:
            self._redraw(force=True)
            self.train_button.disabled, self.stop_button.disabled = False, True

    def _on_step(self, step: int, row: dict) -> None:
        self.steps.append({"step": step, **row})
        self._redraw()
        if self._stop.is_set():
            raise StopTraining

    def _on_eval(self, step: int, row: dict) -> None:
        self.history.append(row)
        self._redraw(force=True)

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not (self.live or force) or (not force and now - self._drawn < self.redraw_seconds):
            return
        self._drawn = now
        total = self.options["steps"].value
        self.curves.value = figure_png(curves_figure(self.steps, self.history, total))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


# -------------------------------------------------------------------------------- score explorer (notebook 01)


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
            (:func:`~workbench.analysis.explore.slate_scores`); the same names in every direction.
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


# --------------------------------------------------------------------------------- query viewer (notebook 02)


def _relevance_colour(r: float) -> str:
    """A background colour from white (relevance 0) to light green (1)."""
    r = min(max(float(r), 0.0), 1.0)
    red, green, blue = (round(255 + (end - 255) * r) for end in (140, 215, 140))
    return f"rgb({red},{green},{blue})"


def query_table_html(frame: pd.DataFrame) -> str:
    """:func:`~workbench.analysis.explore.query_frame` as an HTML table; positives bold, relevance shaded."""
    head = ("<tr><th>role</th><th>candidate</th><th>text</th><th>student rank</th><th>teacher rank</th>"
            "<th>relevance</th><th>s (student)</th><th>u (teacher logit)</th></tr>")
    body = []
    for r in frame.itertuples():
        style = "font-weight:bold" if r.role == "positive" else ("color:#555" if r.role == "easy" else "")
        rank = [("" if pd.isna(x) else str(int(x))) for x in (r.student_rank, r.teacher_rank)]
        body.append(
            f"<tr style='{style}'><td>{r.role}</td><td>{r.candidate}</td><td>{html.escape(r.text)}</td>"
            f"<td>{rank[0]}</td><td>{rank[1]}</td>"
            f"<td style='background:{_relevance_colour(r.relevance)}'>{r.relevance:.2f}</td>"
            f"<td>{r.student:.2f}</td><td>{r.teacher:.2f}</td></tr>")
    return "<table class='wb-query' style='font-size:12px'>" + head + "".join(body) + "</table>"


class QueryViewer:
    """Notebook 02's per-query viewer: one query of the evaluation slates, its candidates in one window (hard, easy
    or both), and how the student's rank, the teacher's rank and the world's truth compare.

    Controls: ``direction``, ``query`` (row of the slates; on release), ``window`` and ``order`` (sort the table by
    student rank, teacher rank or relevance). Shows ``header`` (the query and its Kendall taus over the window),
    a figure (the query image, or for text->image the first candidate images in the chosen order; and teacher rank
    against student rank, coloured by relevance) and ``table`` (every positive and window negative).

    Args:
        slates: ``{direction: EvalSlates}`` with ``queries`` / ``candidates``; split: the built-in world split they
            were built on; images: how many candidate images a text->image query shows.

    Attributes:
        controls, view (the :class:`FigureView`), header, table (HTML), frame (the current table's DataFrame), widget.
    """

    def __init__(self, slates: Mapping[str, Any], split: Any, *, images: int = 5):
        if not slates:
            raise ValueError("slates must hold at least one direction, got none")
        if any(sl.queries is None or sl.candidates is None for sl in slates.values()):
            raise ValueError("slates must carry queries and candidates (build them with build_eval_slates)")
        self.slates, self.split, self.images = dict(slates), split, images
        first = next(iter(self.slates.values()))
        controls = {
            "direction": W.ToggleButtons(options=list(self.slates), description="direction", style=WIDE),
            "query": W.IntSlider(value=0, min=0, max=len(first.student) - 1, description="query", style=WIDE, **SLOW),
            "window": W.ToggleButtons(options=list(WINDOWS), value="hard", description="negatives", style=WIDE),
            "order": W.Dropdown(options=list(ORDERS), value="teacher", description="sort by", style=WIDE),
        }
        self._query_slider = controls["query"]
        controls["direction"].observe(self._set_query_range, names="value")  # before the figure redraws
        self.header, self.table = W.HTML(), W.HTML()
        self.frame: pd.DataFrame | None = None
        self.view = FigureView(self._draw, controls, columns=4)
        self.controls = self.view.controls
        for w in self.controls.values():
            w.observe(self._refresh, names="value")
        rows = self.view.widget.children[:-2]  # the controls' rows (then error, image)
        self.widget = W.VBox([*rows, self.header, self.view.error, self.view.image, self.table])
        self._refresh()

    def _set_query_range(self, change: Any) -> None:
        """A new direction may have fewer queries: the slider's range follows (clamping its value)."""
        self._query_slider.max = len(self.slates[change["new"]].student) - 1

    def _query(self, v: Mapping[str, Any]) -> int:
        return min(v["query"], len(self.slates[v["direction"]].student) - 1)

    def taus(self, direction: str, query: int, window: str) -> dict[str, float]:
        """Kendall tau-b of one query over one window: teacher vs truth, teacher vs student, student vs truth."""
        sl = self.slates[direction]
        row = slice(query, query + 1)
        x = {"teacher": sl.teacher[row].numpy(), "student": sl.student[row].numpy(),
             "relevance": sl.relevance[row].numpy()}
        mask = window_mask(sl, window)[row].numpy()
        return {name: float(kendall_tau_rows(x[a], x[b], mask)[0]) for name, (a, b) in PAIRS.items()}

    def _draw(self, direction: str, query: int, window: str, order: str) -> Figure:
        sl, q = self.slates[direction], self._query({"direction": direction, "query": query})
        frame = query_frame(sl, self.split, q, window, order)
        fig = new_figure(10, 3.8)
        left, right = fig.subfigures(1, 2, width_ratios=[1.1, 1])
        if direction == "i2t":
            ax = left.subplots()
            image = int(sl.queries[q])
            scene = textwrap.fill(describe_item(self.split, "image", image), 60)
            self._show_image(ax, image, f"query image {image}\n{scene}")
        else:
            own = frame[frame.role == "positive"].head(1)
            shown = pd.concat([own, frame[frame.role != "positive"].head(self.images - len(own))])
            axes = np.atleast_1d(left.subplots(1, max(len(shown), 1)))
            for ax, r in zip(axes, shown.itertuples(), strict=False):
                rank = "own" if r.role == "positive" else f"S{int(r.student_rank)} T{int(r.teacher_rank)}"
                self._show_image(ax, r.candidate, f"{rank}\nrel {r.relevance:.2f}")
            left.suptitle(f"“{self.split.texts[int(sl.queries[q])]}”", fontsize=8)
        self._rank_plot(right.subplots(), frame, window)
        return fig

    def _show_image(self, ax: Any, index: int, title: str) -> None:
        ax.imshow(self.split.images[index].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")

    @staticmethod
    def _rank_plot(ax: Any, frame: pd.DataFrame, window: str) -> None:
        neg = frame[frame.role != "positive"]
        for role, marker in (("hard", "o"), ("easy", "s")):
            part = neg[neg.role == role]
            if len(part):
                points = ax.scatter(part.student_rank, part.teacher_rank, c=part.relevance, cmap="viridis", vmin=0,
                                    vmax=1, marker=marker, edgecolors="k", linewidths=0.4)
        n = max(len(neg), 1)
        ax.plot([1, n], [1, n], color="grey", lw=0.8, ls="--")
        ax.set(xlabel="student rank", ylabel="teacher rank", xlim=(0.5, n + 0.5), ylim=(n + 0.5, 0.5))
        markers = {"hard": "circles: hard", "easy": "squares: easy", "hard+easy": "circles: hard, squares: easy"}
        ax.set_title(f"{markers[window]} negatives; rank 1 = top left;\non the diagonal teacher and student agree",
                     fontsize=8)
        if len(neg):
            ax.figure.colorbar(points, ax=ax, label="relevance (share of true facts)", shrink=0.8)
        ax.grid(alpha=0.3)

    def _refresh(self, change: Any = None) -> None:
        v = {name: w.value for name, w in self.controls.items()}
        d, q = v["direction"], self._query(v)
        sl = self.slates[d]
        self.frame = query_frame(sl, self.split, q, v["window"], v["order"])
        taus = self.taus(d, q, v["window"])
        fmt = {k: "–" if math.isnan(t) else f"{t:+.2f}" for k, t in taus.items()}
        what = f"image {int(sl.queries[q])}" if d == "i2t" else f"caption {int(sl.queries[q])}"
        self.header.value = (
            f"<div class='wb-query-head'><b>{d} query {q}</b> ({what}): {html.escape(query_text(sl, self.split, q))}"
            f"<br>Kendall τ over its {v['window']} negatives: teacher vs truth <b>{fmt['teacher_relevance']}</b>, "
            f"teacher vs student <b>{fmt['teacher_student']}</b>, student vs truth <b>{fmt['student_relevance']}</b>"
            "</div>")
        self.table.value = query_table_html(self.frame)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
