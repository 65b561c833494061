"""Finding 1: the shape of score distributions (teacher logits, teacher probabilities, student logits).

The paper's Finding 1: a cross-encoder's scores are *concentrated* (most pairs near 0, positives near 1) while a
dual-encoder's are nearly normal, so logit distillation (KL/MSE on score values) transfers poorly and ranking
distillation, which sees only the order, does not care. This module measures the claim on arrays of scores:

- :func:`describe`: moments (skewness, excess kurtosis), normality tests, mass near the extremes, quantiles;
- :func:`query_statistics` / :func:`per_query_stats`: what a softmax over each query's slate sees (entropy,
  top-1 mass) and the top-1 - top-2 gap;
- :func:`group_labels` / :func:`score_groups`: the same statistics split into positives, hard negatives (the
  student's top-K) and easy negatives (sampled beyond rank R);
- :func:`teacher_views` / :func:`scale_sensitivity`: the teacher as logits, as probabilities (sigmoid) and as
  tempered logits, to ask whether the concentration belongs to the teacher or to the sigmoid, and what each view
  changes for a loss (the softmax a KL sees moves; the order a ranking loss sees does not);
- :func:`scale_spread`: how much a method's results move across teacher views, in units of its seed std.

Inputs are torch tensors, numpy arrays or lists; outputs are plain dicts of floats (``None`` where a statistic is
undefined), ready for ``findings.json``. Shapes: ``Q`` queries, ``L`` slate entries per query.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from workbench.checks import check_choice, check_float, check_int
from workbench.evaluation.slates import EvalSlates
from workbench.findings.agreement import kendall_tau_rows
from workbench.findings.stats import ArrayLike, as_array, as_mask, number, require_finite, summary

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
GROUPS = ("positive", "hard", "easy")
"""Group names of :func:`group_labels` codes 0, 1, 2 (``-1`` = not in any group)."""
NORMALTEST_MIN_N = 20
"""D'Agostino-Pearson needs the kurtosis test, which scipy deems unreliable below 20 samples."""


# --------------------------------------------------------------------------------------------- one sample


def describe(
    x: ArrayLike,
    *,
    bounds: tuple[float, float] | None = None,
    extreme: float = 0.05,
    shapiro_max: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """Shape statistics of a 1-D sample of scores.

    Mass near the extremes: with ``bounds=(lo, hi)`` (e.g. ``(0, 1)`` for probabilities) the cuts are
    ``lo + extreme * (hi - lo)`` and ``hi - extreme * (hi - lo)`` (so ``p <= 0.05`` and ``p >= 0.95``); without
    bounds the same fractions of the *sample's* range ``[min, max]`` are used. ``mass_low`` / ``mass_high`` are the
    fractions of the sample at or beyond each cut, ``mass_extremes`` their sum. A normal sample of a few thousand
    has ``mass_extremes`` of about 0.01; a concentrated one (most mass at one end) has much more.

    Normality: with large ``n`` every real sample is "significantly" non-normal, so next to D'Agostino-Pearson's
    statistic and p-value (``normaltest``, n >= 20) the Shapiro-Wilk W of a fixed-seed subsample of at most
    ``shapiro_max`` values is reported as an effect size (W near 1 = close to normal).

    Args:
        x: float [N] scores (any shape is flattened; must be finite and non-empty).
        bounds: the scale's natural bounds, or ``None`` for the sample's range.
        extreme: width of each extreme zone as a fraction of the range, in (0, 0.5).
        shapiro_max: largest subsample given to Shapiro-Wilk (scipy's p-value is exact only up to 5000).
        seed: seed of that subsample.

    Returns:
        ``n, mean, std, min, max, skewness, excess_kurtosis`` (bias-corrected, scipy.stats), ``normaltest_stat,
        normaltest_p, shapiro_w, shapiro_p, shapiro_n, extreme_low_cut, extreme_high_cut, mass_low, mass_high,
        mass_extremes`` and ``quantiles`` ({"q01": ..., "q50": ..., ...}); ``None`` where undefined
        (a constant sample has no skewness, too small a sample no test).
    """
    arr = as_array("x", x).ravel()
    if arr.size == 0:
        raise ValueError("x must hold at least one score, got an empty array")
    require_finite("x", arr)
    check_float("extreme", extreme, min_value=0.0, max_value=0.5, strict_min=True)
    check_int("shapiro_max", shapiro_max, min_value=3)
    spread = float(arr.std()) > 1e-12 * max(1.0, float(np.abs(arr).max()))
    out: dict[str, Any] = {"n": int(arr.size), "mean": number(arr.mean()),
                           "std": number(arr.std(ddof=1)) if arr.size > 1 else None,
                           "min": number(arr.min()), "max": number(arr.max())}
    out |= _moments(arr, spread) | _normality(arr, spread, shapiro_max, seed) | _extremes(arr, bounds, extreme)
    out["quantiles"] = {f"q{round(q * 100):02d}": number(v) for q, v in zip(QUANTILES, np.quantile(arr, QUANTILES),
                                                                            strict=True)}
    return out


def _moments(arr: np.ndarray, spread: bool) -> dict[str, float | None]:
    ok = spread and arr.size >= 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"skewness": number(stats.skew(arr, bias=False)) if ok else None,
                "excess_kurtosis": number(stats.kurtosis(arr, fisher=True, bias=False)) if ok else None}


def _normality(arr: np.ndarray, spread: bool, shapiro_max: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(("normaltest_stat", "normaltest_p", "shapiro_w", "shapiro_p"))
    out["shapiro_n"] = 0
    if not spread:
        return out
    if arr.size >= NORMALTEST_MIN_N:
        stat, p = stats.normaltest(arr)
        out |= {"normaltest_stat": number(stat), "normaltest_p": number(p)}
    if arr.size >= 3:
        sub = arr if arr.size <= shapiro_max else np.random.default_rng(seed).choice(arr, shapiro_max, replace=False)
        w, p = stats.shapiro(sub)
        out |= {"shapiro_w": number(w), "shapiro_p": number(p), "shapiro_n": int(sub.size)}
    return out


def _extremes(arr: np.ndarray, bounds: tuple[float, float] | None, extreme: float) -> dict[str, float | None]:
    if bounds is not None:
        lo, hi = (check_float(f"bounds[{i}]", b) for i, b in enumerate(bounds))
        if hi <= lo:
            raise ValueError(f"bounds must be (low, high) with low < high, got {tuple(bounds)}")
    else:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:  # a constant sample has no extremes to speak of
        return dict.fromkeys(("extreme_low_cut", "extreme_high_cut", "mass_low", "mass_high", "mass_extremes"))
    low_cut, high_cut = lo + extreme * (hi - lo), hi - extreme * (hi - lo)
    low, high = float((arr <= low_cut).mean()), float((arr >= high_cut).mean())
    return {"extreme_low_cut": low_cut, "extreme_high_cut": high_cut, "mass_low": low, "mass_high": high,
            "mass_extremes": low + high}


# --------------------------------------------------------------------------------------------- per query


def query_statistics(scores: ArrayLike, valid: ArrayLike | None = None, *, temperature: float = 1.0
                     ) -> dict[str, np.ndarray]:
    """What a softmax over each query's slate sees, per query.

    Args:
        scores: float [Q, L] scores of each query's slate (padding may hold anything).
        valid: bool [Q, L], True where an entry exists (``None`` = all).
        temperature: the softmax is ``softmax(scores / temperature)`` over the row's valid entries.

    Returns:
        float arrays [Q], NaN for rows with fewer than 2 valid entries:
        ``entropy`` (softmax entropy divided by ``log n_i``, in [0, 1]; 1 = uniform), ``top_mass`` (softmax mass
        on the highest entry), ``gap`` (top-1 minus top-2 score, in the scores' own units, not divided by T),
        and ``n`` (valid entries per row).
    """
    s = as_array("scores", scores, ndim=2)
    mask = as_mask("valid", valid, s.shape)
    require_finite("scores", s, mask)
    temperature = check_float("temperature", temperature, min_value=0.0, strict_min=True)
    n = mask.sum(1)
    z = np.where(mask, s / temperature, -np.inf)
    z = z - np.where(n[:, None] > 0, z.max(1, keepdims=True), 0.0)
    e = np.where(mask, np.exp(z), 0.0)
    p = e / np.maximum(e.sum(1, keepdims=True), 1e-300)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    ok = n >= 2
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = np.where(ok, -plogp.sum(1) / np.log(np.maximum(n, 2)), np.nan)
    gap = np.full(len(s), np.nan)
    if s.shape[1] >= 2:
        top2 = np.sort(np.where(mask, s, -np.inf), axis=1)[:, ::-1][:, :2]  # [Q, 2], best first
        with np.errstate(invalid="ignore"):
            gap = np.where(ok, top2[:, 0] - top2[:, 1], np.nan)
    return {"entropy": entropy, "top_mass": np.where(ok, p.max(1), np.nan), "gap": gap, "n": n.astype(np.float64)}


def per_query_stats(scores: ArrayLike, valid: ArrayLike | None = None, *, temperature: float = 1.0
                    ) -> dict[str, Any]:
    """Summaries (mean, std, median, n) over queries of :func:`query_statistics`'s ``entropy``, ``top_mass``, ``gap``.

    Shapes: ``scores`` float [Q, L]; ``valid`` bool [Q, L] or ``None``. Rows with < 2 valid entries are left out
    (counted in each summary's ``n_undefined``).
    """
    per = query_statistics(scores, valid, temperature=temperature)
    return {"n_queries": int(len(per["n"])), **{k: summary(per[k]) for k in ("entropy", "top_mass", "gap")}}


# --------------------------------------------------------------------------------------------- groups


def group_labels(positive: ArrayLike, hard: ArrayLike, easy: ArrayLike) -> np.ndarray:
    """Group codes int8 [Q, L] of slate entries: 0 positive, 1 hard negative, 2 easy negative, -1 none (padding).

    Args:
        positive, hard, easy: bool [Q, L] masks of the three groups; they must not overlap.
    """
    pos = as_mask("positive", positive, np.shape(positive))
    masks = {"positive": pos, "hard": as_mask("hard", hard, pos.shape), "easy": as_mask("easy", easy, pos.shape)}
    count = sum(m.astype(np.int8) for m in masks.values())
    if (count > 1).any():
        first = tuple(int(i) for i in np.argwhere(count > 1)[0])
        raise ValueError(f"positive, hard and easy must not overlap, got {int((count > 1).sum())} entries in "
                         f"several groups (first at {first})")
    labels = np.full(pos.shape, -1, dtype=np.int8)
    for code, name in enumerate(GROUPS):
        labels[masks[name]] = code
    return labels


def score_groups(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    names: Sequence[str] = GROUPS,
    include_all: bool = True,
    **describe_kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`describe` of the scores in each group.

    Args:
        scores: float [...] scores (e.g. [Q, L] slates); entries outside every group may hold anything.
        labels: int [...] same shape: code ``c`` means group ``names[c]``, ``-1`` means none (see :func:`group_labels`).
        names: group name of each code.
        include_all: also describe the pooled entries of all groups (key ``"all"``; its composition follows the
            slates', so it is not the distribution over all pairs).
        **describe_kwargs: passed to :func:`describe` (e.g. ``bounds=(0, 1)`` for probabilities).

    Returns:
        ``{name: describe(...)}`` for every name (``{"n": 0}`` for an empty group), plus ``"all"``.
    """
    s = as_array("scores", scores)
    lab = as_array("labels", labels, shape=s.shape)
    if (lab != np.round(lab)).any() or ((lab < -1) | (lab >= len(names))).any():
        raise ValueError(f"labels must be integers in [-1, {len(names) - 1}] (codes of {list(names)}), "
                         f"got values {np.unique(lab)[:10].tolist()}")
    out = {}
    for code, name in enumerate(names):
        out[name] = describe(s[lab == code], **describe_kwargs) if (lab == code).any() else {"n": 0}
    if include_all:
        out["all"] = describe(s[lab >= 0], **describe_kwargs) if (lab >= 0).any() else {"n": 0}
    return out


def grouped_values(scores: ArrayLike, labels: ArrayLike, names: Sequence[str] = GROUPS) -> dict[str, np.ndarray]:
    """``{name: float [n_name]}``: the scores of each group as flat arrays (e.g. for the histogram figure)."""
    s = as_array("scores", scores)
    lab = as_array("labels", labels, shape=s.shape)
    return {name: s[lab == code] for code, name in enumerate(names)}


# --------------------------------------------------------------------------------------------- teacher views


def teacher_views(logits: ArrayLike, *, temperature: float = 4.0) -> dict[str, np.ndarray]:
    """The three teacher views the scale check trains on (as ``FitConfig.teacher_output`` names them).

    ``logit``: the ITM logit; ``probability``: ``sigmoid(logit)`` computed in float32 as the trainer's score store
    does (so logits above ~17 all become exactly 1.0 and tie); ``tempered``: ``logit / temperature``.
    All float64 arrays of ``logits``' shape.
    """
    u = as_array("logits", logits)
    temperature = check_float("temperature", temperature, min_value=0.0, strict_min=True)
    prob = 1.0 / (1.0 + np.exp(-u.astype(np.float32)))
    return {"logit": u.copy(), "probability": prob.astype(np.float64), "tempered": u / temperature}


def scale_sensitivity(
    logits: ArrayLike, valid: ArrayLike | None = None, *, temperature: float = 4.0, negatives: ArrayLike | None = None
) -> dict[str, dict[str, Any]]:
    """What each teacher view changes for a loss that reads it, on the same slates.

    For every view of :func:`teacher_views`: the distribution of its values (:func:`describe`; probabilities with
    ``bounds=(0, 1)``), the softmax a KL loss would match (:func:`per_query_stats`), and the order a ranking loss
    would learn, as the mean per-query Kendall tau-b against the logit order over ``negatives`` (1.0 = the same
    order; below 1 only where float32 sigmoid saturation ties logits, a real effect for logits above ~17).

    Args:
        logits: float [Q, L] teacher ITM logits over the slates.
        valid: bool [Q, L] existing entries (``None`` = all).
        temperature: the tempered view's divisor.
        negatives: bool [Q, L] entries whose order a ranking loss learns (default: ``valid``).

    Returns:
        ``{view: {"describe": ..., "per_query": ..., "order_tau": {"mean", "min", "n"}}}``.
    """
    u = as_array("logits", logits, ndim=2)
    mask = as_mask("valid", valid, u.shape)
    neg = as_mask("negatives", negatives, u.shape) & mask if negatives is not None else mask
    views = teacher_views(np.where(mask, u, 0.0), temperature=temperature)
    out = {}
    for name, v in views.items():
        tau = kendall_tau_rows(views["logit"], v, neg)
        ok = tau[np.isfinite(tau)]
        out[name] = {
            "describe": describe(v[mask], bounds=(0.0, 1.0) if name == "probability" else None),
            "per_query": per_query_stats(v, mask),
            "order_tau": {"mean": number(ok.mean()) if ok.size else None,
                          "min": number(ok.min()) if ok.size else None, "n": int(ok.size)},
        }
    return out


def scale_spread(results: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, dict[str, Any]]:
    """How much each method's metric moves across teacher views, against its seed-to-seed noise.

    Args:
        results: ``{method: {view: [metric per seed]}}`` (e.g. RSUM of ``kl`` trained on logits, probabilities and
            tempered logits).

    Returns:
        ``{method: {"means": {view: mean}, "spread": max - min of the view means, "pooled_std": sqrt of the mean
        per-view variance (ddof=1; None with one seed per view), "spread_over_std": spread / pooled_std}}``.
        A ranking loss that sees only the order should have ``spread_over_std`` of order 1 (noise); a logit loss
        that reads the values may move by many stds.
    """
    out = {}
    for method, by_view in results.items():
        if not by_view:
            raise ValueError(f"results[{method!r}] must map at least one teacher view to metric values, got none")
        vals = {view: as_array(f"results[{method!r}][{view!r}]", v, ndim=1) for view, v in by_view.items()}
        if any(v.size == 0 for v in vals.values()):
            raise ValueError(f"results[{method!r}] has a view with no values: {list(vals)}")
        means = {view: float(v.mean()) for view, v in vals.items()}
        spread = max(means.values()) - min(means.values())
        variances = [v.var(ddof=1) for v in vals.values() if v.size > 1]
        pooled = float(np.sqrt(np.mean(variances))) if variances else None
        ratio = spread / pooled if pooled else None
        out[method] = {"means": means, "spread": spread, "pooled_std": pooled, "spread_over_std": number(ratio)}
    return out


TEACHER = "teacher"
"""The model name of the cross-encoder in :func:`score_view` (every other name is a student)."""


VIEWS = ("logit", "probability", "tempered")


DESCRIBE_COLUMNS = ("n", "mean", "std", "skewness", "excess_kurtosis", "mass_extremes", "shapiro_w")


def score_view(slates: EvalSlates, students: Mapping[str, torch.Tensor], model: str, view: str = "logit",
               temperature: float = 4.0) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """One model's scores on the slates.

    Args:
        slates: the evaluation slates (their ``teacher`` holds ITM logits).
        students: ``{name: float [Q, L]}`` student logits on the same entries (see :func:`slate_scores`).
        model: :data:`TEACHER` or a student name.
        view: the teacher's view: ``"logit"``, ``"probability"`` (sigmoid) or ``"tempered"`` (logit / temperature);
            ignored for students (always their logits).
        temperature: the tempered view's divisor (> 0).

    Returns:
        (float64 [Q, L] scores, the scale's natural bounds (``(0, 1)`` for probabilities, else ``None``), a label).
    """
    check_choice("model", model, [TEACHER, *students])
    if model != TEACHER:
        return as_array(f"students[{model!r}]", students[model]).astype(np.float64), None, f"student {model} logit"
    check_choice("view", view, VIEWS)
    x = teacher_views(slates.teacher.numpy(), temperature=temperature)[view]
    label = f"teacher {view}" + (f" (T = {temperature:g})" if view == "tempered" else "")
    return x, ((0.0, 1.0) if view == "probability" else None), label


def slate_labels(slates: EvalSlates) -> np.ndarray:
    """int8 [Q, L] group codes of the entries (0 positive, 1 hard, 2 easy, -1 padding), as ``group_labels``."""
    return group_labels(slates.positive.numpy(), slates.hard.numpy(), slates.easy.numpy())


def distribution_table(slates: EvalSlates, students: Mapping[str, torch.Tensor], *, temperature: float = 4.0,
                       columns: Sequence[str] = DESCRIBE_COLUMNS) -> pd.DataFrame:
    """:func:`~workbench.findings.distributions.describe` of every (source, group): the teacher's three views, then
    each student's logits, over positives, hard and easy negatives.

    Returns:
        A frame indexed by (source label, group) with ``columns`` (``mass_extremes``: share within 5% of either end
        of the range; ``shapiro_w``: near 1 = near normal). Empty groups are left out.
    """
    labels = slate_labels(slates)
    sources = [(TEACHER, v) for v in VIEWS] + [(name, "logit") for name in students]
    rows = {}
    for model, view in sources:
        x, bounds, label = score_view(slates, students, model, view, temperature)
        for group, values in grouped_values(x, labels).items():
            if values.size:
                d = describe(values, bounds=bounds)
                rows[(label, group)] = {c: d.get(c) for c in columns}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["source", "group"])


def teacher_view_table(slates: EvalSlates, *, temperature: float = 4.0) -> pd.DataFrame:
    """What each teacher view changes for a loss that reads it, over the slates' negatives.

    Rows: ``logit``, ``probability``, ``tempered``. Columns: ``skewness`` and ``mass_extremes`` of the view's values,
    the mean normalised ``softmax_entropy`` and ``top1_mass`` of each query's softmax over its slate (what a KL loss
    matches), and ``order_tau``: the mean Kendall tau of the view's order of the negatives against the logits' (what
    a ranking loss learns; 1 = the same order).
    """
    negatives = (slates.hard | slates.easy).numpy()
    sens = scale_sensitivity(slates.teacher.numpy(), slates.valid.numpy(), temperature=temperature,
                             negatives=negatives)
    rows = {view: {"skewness": s["describe"]["skewness"], "mass_extremes": s["describe"]["mass_extremes"],
                   "softmax_entropy": s["per_query"]["entropy"]["mean"],
                   "top1_mass": s["per_query"]["top_mass"]["mean"], "order_tau": s["order_tau"]["mean"]}
            for view, s in sens.items()}
    return pd.DataFrame.from_dict(rows, orient="index")
