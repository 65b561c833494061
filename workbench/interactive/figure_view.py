"""Figures inside widgets, and the shared controls: ``FigureView`` redraws a matplotlib figure when its controls
change; ``loss_param_controls`` makes one control per hyperparameter of a registered loss.

Figures are rendered with matplotlib's Agg backend into ``ipywidgets.Image`` PNGs: this works the same in
JupyterLab, in a headless test (``widget.value`` holds the bytes) and from a training thread. Anything slow
redraws only on release (``continuous_update=False``) or on a button.

    view = FigureView(draw, {"k": IntSlider(...)})   # draw(**values) -> matplotlib Figure; redrawn on change

A notebook shows a finished figure with ``show_figure(fig, smoke=SMOKE)`` (an ``image/png`` output whether the
figure was made by pyplot or not) and a table with ``show_table(df, smoke=SMOKE, note=...)``; in smoke mode both
say that their numbers only show that the code runs.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as W
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, Image, display
from matplotlib.figure import Figure

from workbench.losses import loss_spec

SLOW = {"continuous_update": False}


WIDE = {"description_width": "initial"}
LABEL = {"description_width": "140px"}
SLIDER_WIDTH = "360px"
SLIDER = {"style": LABEL, "layout": {"width": SLIDER_WIDTH}, **SLOW}
"""Every slider of a widget: one label width and one track length, redrawn on release."""


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure (rendered off-screen; the figure is not shown or kept)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


SMOKE_NOTE = "SMOKE MODE (tiny world, a few steps): these numbers only show that the code runs"


def mark_smoke(fig: Figure) -> Figure:
    """Write ``SMOKE_NOTE`` in red across the top of ``fig`` (once) and return it."""
    if not getattr(fig, "_wb_smoke", False):
        fig.text(0.5, 1.0, SMOKE_NOTE, ha="center", va="bottom", color="#b00", fontsize=10, weight="bold")
        fig._wb_smoke = True
    return fig


def show_figure(fig: Figure, *, smoke: bool = False, dpi: int = 100) -> Figure:
    """Display ``fig`` as an ``image/png`` output (pyplot or not; pyplot's own copy is closed so it is not shown
    twice), marked with ``SMOKE_NOTE`` when ``smoke``. Call it before saving, so saved copies carry the mark too."""
    if not isinstance(fig, Figure):
        raise TypeError(f"show_figure: fig must be a matplotlib Figure (ax.figure for axes), got {type(fig).__name__}")
    if smoke:
        mark_smoke(fig)
    display(Image(data=figure_png(fig, dpi), format="png"))
    plt.close(fig)
    return fig


def show_table(table: pd.DataFrame | Any, *, smoke: bool = False, note: str = "") -> None:
    """Display a table with ``note`` (e.g. which directions its values average) above it, and in smoke mode
    ``SMOKE_NOTE`` above that."""
    lines = [f"<b style='color:#b00'>{html.escape(SMOKE_NOTE)}</b>"] if smoke else []
    lines += [f"<i>{html.escape(note)}</i>"] if note else []
    if lines:
        display(HTML("<div class='wb-table-note'>" + "<br>".join(lines) + "</div>"))
    display(table)


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
        elif p.rule is not None and p.rule.choices is not None:  # one_of(...): e.g. CPRD's live set of rules
            w = W.Dropdown(options=list(p.rule.choices), value=p.default, description=key)
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
