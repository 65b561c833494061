"""The training panel (notebook 03): pick loss terms and weights, train with live curves and a stop button; the run
is written by :func:`~workbench.experiments.runs.train_run`, exactly like ``python -m workbench train``.

    TrainPanel(workspace, profile("quick"), "runs/notebooks")
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
from matplotlib.figure import Figure

from workbench.interactive.figure_view import figure_png, loss_param_controls, new_figure
from workbench.training.config import ITC, FitConfig, LossTerm
from workbench.training.loop import StopTraining


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

    The run is written by :func:`~workbench.experiments.runs.train_student_run`, exactly like ``python -m workbench
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
            from workbench.experiments import train_run as train
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
