"""Finding 2: where does the teacher's order carry knowledge? Rank agreement per query, hard vs easy negatives.

The paper's Finding 2: only the relative order among *hard* negatives is valid knowledge; the order among easy
negatives means little. The built-in world knows the graded truth (``Split.relevance_pairs``: the fraction of a
caption's facts that hold in an image), so the claim can be checked directly: over each window of a query's
slate (its hard negatives = the student's top-K, its easy negatives = sampled beyond rank R), compare

- teacher vs relevance: does the teacher's order follow the truth there, or is it noise?
- teacher vs student: how much of the teacher's order does the student already share?
- student vs relevance: the reference, how much truth the student's own order holds.

:func:`kendall_tau_rows` is Kendall's tau-b (ties handled, as ``scipy.stats.kendalltau``) for every row at once;
:func:`agreement_taus` gives the per-query taus of the three comparisons over each window and
:func:`agreement_summary` their means, spreads and a test against zero (plain dicts for ``findings.json``).
Shapes: ``Q`` queries, ``L`` slate entries per query.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from workbench.checks import check_choice, check_int
from workbench.evaluation.slates import EvalSlates
from workbench.findings.stats import ArrayLike, as_array, as_mask, number, require_finite, summary

PAIRS = {"teacher_student": ("teacher", "student"), "teacher_relevance": ("teacher", "relevance"),
         "student_relevance": ("student", "relevance")}
"""The compared orders: name -> (first, second)."""
WINDOWS = ("hard", "easy")
"""The windows of a query's slate the agreement analyses compare."""
VIEW_WINDOWS = ("hard", "easy", "hard+easy")
"""The windows :func:`window_mask` (and the query viewer) can show."""


def kendall_tau_rows(a: ArrayLike, b: ArrayLike, valid: ArrayLike | None = None, *, block: int = 1 << 20
                     ) -> np.ndarray:
    """Kendall's tau-b between ``a[q]`` and ``b[q]`` over each row's valid entries, all rows at once.

    ``tau_b = (C - D) / sqrt((n0 - n_a) (n0 - n_b))`` with ``C``/``D`` the concordant/discordant pairs, ``n0`` all
    pairs, ``n_a``/``n_b`` the pairs tied in ``a``/``b`` (as ``scipy.stats.kendalltau(variant="b")``). Computed as
    ``sum sign(da) sign(db) / sqrt(sum |sign(da)| * sum |sign(db)|)`` over the row's pairs, in blocks of rows.

    Args:
        a, b: float [Q, L] two scorings of the same entries (padding may hold anything, even NaN).
        valid: bool [Q, L], entries to compare (``None`` = all).
        block: at most this many (row, pair) elements per block (bounds memory: about 40 bytes each).

    Returns:
        float [Q] tau-b per row; NaN where a row has fewer than 2 valid entries or ``a`` or ``b`` is constant on it.
    """
    a = as_array("a", a, ndim=2)
    b = as_array("b", b, shape=a.shape)
    mask = as_mask("valid", valid, a.shape)
    require_finite("a", a, mask)
    require_finite("b", b, mask)
    check_int("block", block, min_value=1)
    q, length = a.shape
    tau = np.full(q, np.nan)
    if length < 2:
        return tau
    a, b = np.where(mask, a, 0.0), np.where(mask, b, 0.0)
    i, j = np.triu_indices(length, 1)  # all pairs (i < j) of slate positions
    rows = max(1, block // len(i))
    for r in range(0, q, rows):
        sl = slice(r, r + rows)
        both = mask[sl][:, i] & mask[sl][:, j]  # [q, P]
        sa = np.sign(a[sl][:, i] - a[sl][:, j]).astype(np.int8) * both
        sb = np.sign(b[sl][:, i] - b[sl][:, j]).astype(np.int8) * both
        s = (sa * sb).sum(1, dtype=np.int64)
        na, nb = np.abs(sa).sum(1, dtype=np.int64), np.abs(sb).sum(1, dtype=np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            tau[sl] = np.where((na > 0) & (nb > 0), s / np.sqrt(na.astype(np.float64) * nb), np.nan)
    return np.clip(tau, -1.0, 1.0)


def tau_summary(tau: ArrayLike) -> dict[str, Any]:
    """Mean, std, median, n (+ ``n_undefined``), standard error and a one-sample t-test of mean tau = 0.

    Args:
        tau: float [Q] per-query taus (NaN = undefined for that query; left out).

    Returns:
        :func:`~workbench.findings.stats.summary`'s keys plus ``sem`` and ``p_zero`` (two-sided p-value that the
        mean is 0; ``None`` with fewer than 2 defined values or no spread).
    """
    arr = as_array("tau", tau, ndim=1)
    out = summary(arr)
    ok = arr[np.isfinite(arr)]
    out["sem"] = number(ok.std(ddof=1) / np.sqrt(ok.size)) if ok.size > 1 else None
    out["p_zero"] = None
    if ok.size > 1 and ok.std() > 0:
        out["p_zero"] = number(stats.ttest_1samp(ok, 0.0).pvalue)
    return out


def agreement_taus(
    teacher: ArrayLike, student: ArrayLike, relevance: ArrayLike, hard_mask: ArrayLike, easy_mask: ArrayLike
) -> dict[str, dict[str, np.ndarray]]:
    """Per-query Kendall tau-b of each compared pair of orders, over the hard and over the easy window.

    Args:
        teacher: float [Q, L] teacher scores (logits or probabilities: tau only sees the order).
        student: float [Q, L] student scores.
        relevance: float [Q, L] the world's graded relevance of each (query, entry) pair.
        hard_mask: bool [Q, L] the query's hard negatives (student top-K, positives excluded).
        easy_mask: bool [Q, L] the query's easy negatives (sampled beyond rank R).

    Returns:
        ``{"hard"|"easy": {"teacher_student"|"teacher_relevance"|"student_relevance": float [Q]}}`` (NaN where
        undefined: < 2 entries in the window, or one order constant there, e.g. all relevance 0).
    """
    t = as_array("teacher", teacher, ndim=2)
    scores = {"teacher": t, "student": as_array("student", student, shape=t.shape),
              "relevance": as_array("relevance", relevance, shape=t.shape)}
    windows = {"hard": as_mask("hard_mask", hard_mask, t.shape), "easy": as_mask("easy_mask", easy_mask, t.shape)}
    return {w: {name: kendall_tau_rows(scores[x], scores[y], m) for name, (x, y) in PAIRS.items()}
            for w, m in windows.items()}


def agreement_summary(
    teacher: ArrayLike, student: ArrayLike, relevance: ArrayLike, hard_mask: ArrayLike, easy_mask: ArrayLike
) -> dict[str, Any]:
    """:func:`tau_summary` of every :func:`agreement_taus` entry, and the hard - easy difference of the means.

    Shapes as :func:`agreement_taus`. Returns ``{"hard": {pair: summary}, "easy": {pair: summary},
    "hard_minus_easy": {pair: mean difference or None}}``. Finding 2 predicts ``teacher_relevance`` clearly above 0
    on ``hard`` and near 0 on ``easy``.
    """
    taus = agreement_taus(teacher, student, relevance, hard_mask, easy_mask)
    out: dict[str, Any] = {w: {name: tau_summary(v) for name, v in by_pair.items()} for w, by_pair in taus.items()}
    diff = {}
    for name in PAIRS:
        hard, easy = out["hard"][name]["mean"], out["easy"][name]["mean"]
        diff[name] = None if hard is None or easy is None else hard - easy
    out["hard_minus_easy"] = diff
    return out



def window_mask(slates: EvalSlates, window: str) -> torch.Tensor:
    """bool [Q, L]: the entries of ``window`` (``"hard"``, ``"easy"`` or ``"hard+easy"``)."""
    check_choice("window", window, VIEW_WINDOWS)
    return {"hard": slates.hard, "easy": slates.easy, "hard+easy": slates.hard | slates.easy}[window]


def window_ranks(scores: Any, mask: Any) -> np.ndarray:
    """Rank of every masked entry among its row's masked entries: 1 = highest score; ties go to the lower column.

    Args:
        scores: float [Q, L]; mask: bool [Q, L].

    Returns:
        float [Q, L], ranks 1..n_q where ``mask``, NaN elsewhere.
    """
    s = as_array("scores", scores, ndim=2)
    m = as_mask("mask", mask, s.shape)
    keys = np.where(m, -s, np.inf)
    order = np.argsort(keys, axis=1, kind="stable")
    ranks = np.empty(s.shape)
    np.put_along_axis(ranks, order, np.arange(1, s.shape[1] + 1, dtype=np.float64)[None].repeat(len(s), 0), axis=1)
    return np.where(m, ranks, np.nan)


def pair_statistics(teacher: Any, relevance: Any, mask: Any) -> dict[str, np.ndarray]:
    """Per query, over every pair of its masked entries: can the truth order the pair, and does the teacher?

    Args:
        teacher: float [Q, L] ITM logits; relevance: float [Q, L] the world's graded relevance; mask: bool [Q, L].

    Returns:
        float [Q] arrays: ``pairs`` (pairs of masked entries), ``informative`` (share of them whose relevance
        differs, i.e. the truth prefers one), ``teacher_accuracy`` (share of those informative pairs the teacher
        orders like the truth; a teacher tie counts 1/2), ``prob_gap`` (mean ``|sigmoid(u_a) - sigmoid(u_b)|`` over
        all pairs: how far apart the teacher's own match probabilities are). NaN where a row has no pair (or, for
        ``teacher_accuracy``, no informative pair).
    """
    u = as_array("teacher", teacher, ndim=2)
    r = as_array("relevance", relevance, shape=u.shape)
    m = as_mask("mask", mask, u.shape)
    i, j = np.triu_indices(u.shape[1], 1)
    both = m[:, i] & m[:, j]  # [Q, P]
    truth, order = np.sign(r[:, i] - r[:, j]), np.sign(u[:, i] - u[:, j])
    informative = both & (truth != 0)
    right = np.where(order == truth, 1.0, np.where(order == 0, 0.5, 0.0))
    p = 1.0 / (1.0 + np.exp(-u))
    n, n_inf = both.sum(1), informative.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"pairs": n.astype(np.float64),
                "informative": np.where(n > 0, n_inf / n, np.nan),
                "teacher_accuracy": np.where(n_inf > 0, (right * informative).sum(1) / n_inf, np.nan),
                "prob_gap": np.where(n > 0, (np.abs(p[:, i] - p[:, j]) * both).sum(1) / n, np.nan)}


def window_table(slates: Mapping[str, EvalSlates]) -> pd.DataFrame:
    """Means over queries of :func:`pair_statistics` per (direction, window), with the share of the window's
    negatives that are partly true (relevance > 0).

    Args:
        slates: ``{direction: EvalSlates}``.
    """
    rows = {}
    for direction, sl in slates.items():
        for window in ("hard", "easy"):
            mask = window_mask(sl, window)
            stats = pair_statistics(sl.teacher.numpy(), sl.relevance.numpy(), mask.numpy())
            rows[(direction, window)] = {"negatives": float(mask.sum(1).float().mean()),
                                         "partly_true": float((sl.relevance[mask] > 0).float().mean()),
                                         **{k: float(np.nanmean(v)) for k, v in stats.items() if k != "pairs"}}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["direction", "window"])


def agreement_table(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """``{direction: agreement_summary(...)}`` as a frame indexed by (direction, window, pair) with the mean, std,
    number of queries with a defined tau and the p-value of "mean tau = 0"."""
    rows = {}
    for direction, by_window in summaries.items():
        for window in ("hard", "easy"):
            for pair, s in by_window[window].items():
                rows[(direction, window, pair)] = {"mean": s["mean"], "std": s["std"], "n": s["n"],
                                                   "p_zero": s["p_zero"]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["direction", "window", "pair"])


def _pairs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first column [P], second column [P], both masked bool [Q, P]) of every unordered column pair."""
    i, j = np.triu_indices(mask.shape[1], 1)
    return i, j, mask[:, i] & mask[:, j]


def accuracy_by_gap(teacher: ArrayLike, relevance: ArrayLike, mask: ArrayLike, *, resamples: int = 1000,
                    seed: int = 0) -> dict[str, dict[str, Any]]:
    """The teacher's pairwise accuracy against the truth, by the pair's relevance gap, ties counted apart.

    Over every pair of masked entries of every row: a pair with ``|r_a - r_b| > 0`` has a right order (the truth's);
    the teacher gets it right (1), wrong (0) or ties it (1/2). Pairs the truth ties have no right order: only
    counted (how much of the window a tie-breaking order — what the paper calls noise — would decide).

    Args:
        teacher: float [Q, L] scores; relevance: float [Q, L] graded truth; mask: bool [Q, L] (a window).
        resamples: bootstrap resamples of the queries for the 95 % interval (pairs within a query are not
            independent, so queries are resampled).

    Returns:
        ``{"gap 0.33": {"pairs", "accuracy", "ci95"}, ..., "tie": {"pairs", "share"}}`` (gaps rounded to 2
        decimals; ``share`` = tied pairs / all pairs).
    """
    u = as_array("teacher", teacher, ndim=2)
    r = as_array("relevance", relevance, shape=u.shape)
    m = as_mask("mask", mask, u.shape)
    i, j, both = _pairs(m)
    gap = np.round(np.abs(r[:, i] - r[:, j]), 2)
    truth, order = np.sign(r[:, i] - r[:, j]), np.sign(u[:, i] - u[:, j])
    right = np.where(order == truth, 1.0, np.where(order == 0, 0.5, 0.0))
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Any]] = {}
    for g in np.unique(gap[both & (gap > 0)]):
        sel = both & (gap == g)
        hits, counts = (right * sel).sum(1), sel.sum(1)  # per query [Q]
        rows = rng.integers(0, len(counts), (resamples, len(counts)))
        boot = hits[rows].sum(1) / np.maximum(counts[rows].sum(1), 1)
        out[f"gap {g:.2f}"] = {"pairs": int(counts.sum()), "accuracy": number(hits.sum() / counts.sum()),
                               "ci95": [number(np.quantile(boot, 0.025)), number(np.quantile(boot, 0.975))]}
    ties = both & (gap == 0)
    out["tie"] = {"pairs": int(ties.sum()), "share": number(ties.sum() / max(both.sum(), 1))}
    return out


def tie_stability(teacher_a: ArrayLike, teacher_b: ArrayLike, relevance: ArrayLike, mask: ArrayLike
                  ) -> dict[str, Any]:
    """How often two teachers (e.g. two training seeds) order a pair the same way, within relevance ties and across.

    Within a tie the truth has no order, so an order shared by independently trained teachers is knowledge they
    both picked up (or a bias of the recipe), and 0.5 means each teacher's tie order is its own noise.

    Args:
        teacher_a, teacher_b: float [Q, L] two teachers' scores of the same entries; relevance: float [Q, L];
            mask: bool [Q, L].

    Returns:
        ``{"tied": {"pairs", "same_order"}, "untied": {"pairs", "same_order"}}``: the share of pairs both teachers
        order the same way (a pair either teacher ties counts 1/2).
    """
    a = as_array("teacher_a", teacher_a, ndim=2)
    b = as_array("teacher_b", teacher_b, shape=a.shape)
    r = as_array("relevance", relevance, shape=a.shape)
    i, j, both = _pairs(as_mask("mask", mask, a.shape))
    sa, sb = np.sign(a[:, i] - a[:, j]), np.sign(b[:, i] - b[:, j])
    same = np.where((sa == 0) | (sb == 0), 0.5, (sa == sb).astype(np.float64))
    tied = r[:, i] == r[:, j]
    out = {}
    for name, sel in (("tied", both & tied), ("untied", both & ~tied)):
        n = int(sel.sum())
        out[name] = {"pairs": n, "same_order": number((same * sel).sum() / n) if n else None}
    return out
