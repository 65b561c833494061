"""The query viewer (notebook 02): one query, its candidates, and three orders side by side (the student's, the
teacher's and the world's graded truth), over the hard or the easy window.

    QueryViewer(slates, split)
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
from matplotlib.figure import Figure

from workbench.checks import check_choice, check_int
from workbench.evaluation.slates import EvalSlates
from workbench.findings.agreement import PAIRS, VIEW_WINDOWS, kendall_tau_rows, window_mask, window_ranks
from workbench.interactive.figure_view import SLOW, WIDE, FigureView, new_figure

QUERY_COLUMNS = {"role": "role", "candidate": "candidate", "text": "text", "student_rank": "student rank",
                 "teacher_rank": "teacher rank", "relevance": "relevance", "student": "s (student)",
                 "teacher": "u (teacher logit)"}


def _relevance_colour(r: float) -> str:
    """A background colour from white (relevance 0) to light green (1)."""
    r = min(max(float(r), 0.0), 1.0)
    red, green, blue = (round(255 + (end - 255) * r) for end in (140, 215, 140))
    return f"background:rgb({red},{green},{blue})"


def query_table_html(frame: pd.DataFrame) -> str:
    """:func:`query_frame` as an HTML table (a pandas Styler); positives bold, easy negatives grey, relevance
    shaded from white (0) to green (1)."""
    shown = frame[list(QUERY_COLUMNS)].rename(columns=QUERY_COLUMNS)
    styles = {"positive": "font-weight:bold", "easy": "color:#555"}
    styler = shown.style.hide(axis="index").apply(lambda row: [styles.get(row["role"], "")] * len(row), axis=1)
    styler = styler.map(_relevance_colour, subset=["relevance"])
    whole = lambda x: "" if pd.isna(x) else str(int(x))  # noqa: E731
    styler = styler.format({"student rank": whole, "teacher rank": whole, "relevance": "{:.2f}",
                            "s (student)": "{:.2f}", "u (teacher logit)": "{:.2f}"})
    return styler.set_table_attributes("class='wb-query' style='font-size:12px'").to_html()


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
            "window": W.ToggleButtons(options=list(VIEW_WINDOWS), value="hard", description="negatives", style=WIDE),
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


ORDERS = ("student", "teacher", "relevance")


def describe_item(split: Any, kind: str, index: int) -> str:
    """A caption's text (``kind="caption"``), or an image's scene description (the built-in world) / file name (real
    data) (``kind="image"``)."""
    check_choice("kind", kind, ["caption", "image"])
    if kind == "caption":
        return split.texts[index]
    scenes = getattr(split, "scenes", None)
    return scenes[index].describe() if scenes is not None else str(split.image_paths[index].name)


def query_text(slates: EvalSlates, split: Any, q: int) -> str:
    """What query row ``q`` is: the image's scene (i2t) or the caption (t2i)."""
    q = check_int("q", q, min_value=0, max_value=len(slates.student) - 1)
    kind = "image" if slates.direction == "i2t" else "caption"
    return describe_item(split, kind, int(slates.queries[q]))


def query_frame(slates: EvalSlates, split: Any, q: int, window: str = "hard", order: str = "student"
                ) -> pd.DataFrame:
    """One query's positives and the negatives of one window, with both models' ranks and the truth.

    Args:
        slates: evaluation slates with ``queries`` / ``candidates``.
        split: the split they were built on (for captions' texts and scenes).
        q: the query row (0..Q-1).
        window: ``"hard"``, ``"easy"`` or ``"hard+easy"``: whose negatives are listed and ranked.
        order: sort the negatives by ``"student"`` rank, ``"teacher"`` rank or ``"relevance"`` (best first;
            ties by student rank).

    Returns:
        One row per entry: ``role`` (positive / hard / easy), ``candidate`` (split index), ``text`` (caption, or the
        image's scene for t2i), ``student`` (logit), ``student_rank`` and ``teacher_rank`` (1 = first, among the
        window's negatives; empty for positives), ``teacher`` (ITM logit), ``relevance`` (share of the caption's
        facts true in the image). Positives first, by student score.
    """
    q = check_int("q", q, min_value=0, max_value=len(slates.student) - 1)
    check_choice("order", order, ORDERS)
    mask = window_mask(slates, window)[q : q + 1].numpy()
    s, u, rel = (x[q : q + 1].numpy().astype(np.float64) for x in (slates.student, slates.teacher, slates.relevance))
    s_rank, u_rank = window_ranks(s, mask)[0], window_ranks(u, mask)[0]
    kind = "caption" if slates.direction == "i2t" else "image"
    rows = []
    for j in np.flatnonzero(slates.positive[q].numpy() | mask[0]):
        role = "positive" if slates.positive[q, j] else ("hard" if slates.hard[q, j] else "easy")
        cand = int(slates.candidates[q, j])
        rows.append({"role": role, "candidate": cand, "text": describe_item(split, kind, cand),
                     "student": s[0, j], "student_rank": s_rank[j], "teacher": u[0, j], "teacher_rank": u_rank[j],
                     "relevance": rel[0, j]})
    frame = pd.DataFrame(rows)
    key = {"student": ["student_rank"], "teacher": ["teacher_rank"], "relevance": ["relevance", "student_rank"]}
    pos, neg = frame[frame.role == "positive"], frame[frame.role != "positive"]
    neg = neg.sort_values(key[order], ascending=[c != "relevance" for c in key[order]], kind="stable")
    return pd.concat([pos.sort_values("student", ascending=False, kind="stable"), neg], ignore_index=True)
