"""Finding 1 statistics: known moments of known distributions, hand-computed slates, teacher views."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from workbench.findings.distributions import (
    describe,
    group_labels,
    grouped_values,
    per_query_stats,
    query_statistics,
    scale_sensitivity,
    scale_spread,
    score_groups,
    teacher_views,
)

N = 200_000


@pytest.mark.parametrize(
    ("name", "sample", "skew", "kurt"),
    [
        ("normal", lambda rng: rng.normal(3.0, 2.0, N), 0.0, 0.0),
        ("exponential", lambda rng: rng.exponential(1.5, N), 2.0, 6.0),
        ("uniform", lambda rng: rng.uniform(-1.0, 4.0, N), 0.0, -1.2),
    ],
)
def test_describe_recovers_known_moments(name, sample, skew, kurt) -> None:
    x = sample(np.random.default_rng(0))
    d = describe(x)
    assert d["n"] == N
    assert d["skewness"] == pytest.approx(skew, abs=0.05)
    assert d["excess_kurtosis"] == pytest.approx(kurt, abs=0.25 if name == "exponential" else 0.05)
    assert d["mean"] == pytest.approx(x.mean()) and d["std"] == pytest.approx(x.std(ddof=1))
    assert d["quantiles"]["q50"] == pytest.approx(np.median(x))
    assert d["shapiro_n"] == 5000


def test_normality_effect_size_separates_normal_from_skewed() -> None:
    rng = np.random.default_rng(1)
    normal, expo = describe(rng.normal(size=N)), describe(rng.exponential(size=N))
    assert normal["shapiro_w"] > 0.995 and expo["shapiro_w"] < 0.9
    assert normal["normaltest_p"] > 1e-3 and expo["normaltest_p"] < 1e-10
    # the subsample is fixed by the seed: the same call gives the same W, another seed another W
    x = rng.normal(size=20_000)
    assert describe(x, seed=3)["shapiro_w"] == describe(x, seed=3)["shapiro_w"] != describe(x, seed=4)["shapiro_w"]


def test_describe_shapiro_on_small_sample_matches_scipy() -> None:
    x = np.random.default_rng(2).gamma(2.0, size=300)
    d = describe(x)
    w, p = stats.shapiro(x)
    assert d["shapiro_w"] == pytest.approx(w) and d["shapiro_p"] == pytest.approx(p) and d["shapiro_n"] == 300
    assert d["normaltest_stat"] == pytest.approx(stats.normaltest(x)[0])
    assert d["skewness"] == pytest.approx(stats.skew(x, bias=False))


def test_mass_near_extremes_hand_computed() -> None:
    # probabilities: <= 0.05 and >= 0.95 with bounds (0, 1)
    p = np.array([0.0, 0.01, 0.05, 0.2, 0.5, 0.8, 0.96, 0.99, 1.0, 0.3])
    d = describe(p, bounds=(0.0, 1.0))
    assert d["mass_low"] == pytest.approx(0.3) and d["mass_high"] == pytest.approx(0.3)
    assert d["mass_extremes"] == pytest.approx(0.6)
    assert (d["extreme_low_cut"], d["extreme_high_cut"]) == pytest.approx((0.05, 0.95))
    # without bounds: the sample's range [-10, 10]; cuts at -9 and 9 (extreme=0.05)
    x = np.array([-10.0, -9.5, -9.0, 0.0, 1.0, 2.0, 8.9, 10.0])
    d = describe(x)
    assert (d["extreme_low_cut"], d["extreme_high_cut"]) == pytest.approx((-9.0, 9.0))
    assert d["mass_low"] == pytest.approx(3 / 8) and d["mass_high"] == pytest.approx(1 / 8)
    assert describe(x, extreme=0.1)["mass_high"] == pytest.approx(2 / 8)


def test_concentrated_probabilities_have_mass_at_the_extremes_and_a_normal_sample_not() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(-4.0, 3.0, 50_000)
    probs = describe(1 / (1 + np.exp(-logits)), bounds=(0.0, 1.0))
    normal = describe(rng.normal(size=50_000))
    assert probs["mass_low"] > 0.6 and probs["skewness"] > 1.5
    assert normal["mass_extremes"] < 0.01


def test_describe_degenerate_inputs() -> None:
    d = describe([2.0, 2.0, 2.0, 2.0, 2.0])
    assert d["skewness"] is None and d["excess_kurtosis"] is None and d["shapiro_w"] is None
    assert d["mass_extremes"] is None and d["std"] == 0.0
    one = describe(torch.tensor([1.5]))
    assert one["n"] == 1 and one["std"] is None and one["normaltest_p"] is None
    small = describe(np.arange(10.0))
    assert small["normaltest_stat"] is None and small["skewness"] == pytest.approx(0.0, abs=1e-12)
    json.dumps(d, allow_nan=False)
    json.dumps(describe(np.random.default_rng(0).normal(size=100)), allow_nan=False)


@pytest.mark.parametrize(
    ("x", "kwargs", "message"),
    [
        ([], {}, "x must hold at least one"),
        ([1.0, float("nan")], {}, "x must be finite"),
        ([1.0, 2.0], {"extreme": 0.7}, "extreme must be <= 0.5"),
        ([1.0, 2.0], {"bounds": (1.0, 0.0)}, "bounds must be"),
        (["a", "b"], {}, "x must be an array of numbers"),
    ],
)
def test_describe_bad_input(x, kwargs, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        describe(x, **kwargs)


# --- per query ------------------------------------------------------------------------------------------------


def test_query_statistics_hand_computed() -> None:
    scores = np.array([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 9.0, -1.0], [5.0, 1.0, 7.0, 7.0]])
    valid = np.array([[True, True, True, True], [True, True, False, False], [True, False, True, True]])
    per = query_statistics(scores, valid)
    # row 0 uniform over 4: entropy 1, top mass 1/4, gap 0
    # row 1 softmax over (log 3, 0) = (3/4, 1/4): entropy H / log 2, gap log 3
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    # row 2 over (5, 7, 7): ties at the top, gap 0
    e2 = np.exp([5.0, 7.0, 7.0])
    p2 = e2 / e2.sum()
    np.testing.assert_allclose(per["entropy"], [1.0, h, -(p2 * np.log(p2)).sum() / math.log(3)])
    np.testing.assert_allclose(per["top_mass"], [0.25, 0.75, p2.max()])
    np.testing.assert_allclose(per["gap"], [0.0, math.log(3.0), 0.0])
    np.testing.assert_array_equal(per["n"], [4, 2, 3])


def test_query_statistics_temperature_and_undefined_rows() -> None:
    scores = torch.tensor([[2.0, 0.0], [1.0, float("nan")], [3.0, 4.0]])
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    per = query_statistics(scores, valid, temperature=2.0)
    assert per["top_mass"][0] == pytest.approx(1 / (1 + math.exp(-1.0)))  # softmax of (1, 0)
    assert per["gap"][0] == pytest.approx(2.0)  # in score units, not divided by T
    assert np.isnan(per["entropy"][1:]).all() and np.isnan(per["gap"][1:]).all()
    summary = per_query_stats(scores, valid, temperature=2.0)
    assert summary["n_queries"] == 3 and summary["entropy"]["n"] == 1 and summary["entropy"]["n_undefined"] == 2
    json.dumps(summary, allow_nan=False)


def test_per_query_stats_sharp_vs_flat_rows() -> None:
    rng = np.random.default_rng(4)
    flat, sharp = rng.normal(0, 0.01, (50, 16)), rng.normal(0, 0.01, (50, 16))
    sharp[:, 3] += 20.0
    f, s = per_query_stats(flat), per_query_stats(sharp)
    assert f["entropy"]["mean"] > 0.99 and s["entropy"]["mean"] < 0.01
    assert s["top_mass"]["mean"] > 0.99 and s["gap"]["mean"] == pytest.approx(20.0, abs=0.1)


def test_query_statistics_bad_input() -> None:
    with pytest.raises(ValueError, match="scores must have 2 dimension"):
        query_statistics(np.zeros(4))
    with pytest.raises(ValueError, match="valid must have shape"):
        query_statistics(np.zeros((2, 3)), np.ones((2, 2), dtype=bool))
    with pytest.raises(TypeError, match="valid must be a bool array"):
        query_statistics(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="scores must be finite"):
        query_statistics(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        query_statistics(np.zeros((2, 3)), temperature=0.0)


# --- groups ---------------------------------------------------------------------------------------------------


def test_group_labels_and_score_groups() -> None:
    pos = np.array([[True, False, False, False], [True, False, False, False]])
    hard = np.array([[False, True, True, False], [False, True, False, False]])
    easy = np.array([[False, False, False, True], [False, False, True, False]])
    labels = group_labels(pos, hard, easy)
    np.testing.assert_array_equal(labels, [[0, 1, 1, 2], [0, 1, 2, -1]])
    scores = np.array([[9.0, 5.0, 4.0, 1.0], [8.0, 6.0, 0.0, np.nan]])  # the padding holds NaN
    groups = score_groups(scores, labels)
    assert groups["positive"]["n"] == 2 and groups["positive"]["mean"] == pytest.approx(8.5)
    assert groups["hard"]["n"] == 3 and groups["hard"]["mean"] == pytest.approx(5.0)
    assert groups["easy"]["mean"] == pytest.approx(0.5) and groups["all"]["n"] == 7
    values = grouped_values(scores, labels)
    assert sorted(values["hard"].tolist()) == [4.0, 5.0, 6.0]
    empty = score_groups(scores, np.where(labels == 2, -1, labels), include_all=False)
    assert empty["easy"] == {"n": 0} and "all" not in empty


def test_group_labels_and_score_groups_bad_input() -> None:
    m = np.eye(2, dtype=bool)
    with pytest.raises(ValueError, match="must not overlap"):
        group_labels(m, m, ~m)
    with pytest.raises(ValueError, match="labels must be integers"):
        score_groups(np.zeros((2, 2)), np.full((2, 2), 3))
    with pytest.raises(ValueError, match="labels must have shape"):
        score_groups(np.zeros((2, 2)), np.zeros(4))


# --- teacher views and the scale check ------------------------------------------------------------------------


def test_teacher_views_values() -> None:
    u = np.array([[-2.0, 0.0, 3.0]])
    views = teacher_views(u, temperature=2.0)
    np.testing.assert_allclose(views["probability"], 1 / (1 + np.exp(-u)), rtol=1e-6)
    np.testing.assert_allclose(views["tempered"], u / 2.0)
    assert views["logit"] is not u and np.array_equal(views["logit"], u)


def test_scale_sensitivity_order_kept_but_softmax_changes() -> None:
    rng = np.random.default_rng(5)
    u = rng.normal(-1.0, 2.0, (40, 9))
    out = scale_sensitivity(u, temperature=4.0)
    for view in ("logit", "probability", "tempered"):
        assert out[view]["order_tau"]["mean"] == pytest.approx(1.0)
    # a softmax over probabilities in [0, 1] is nearly uniform; over logits it is not
    assert out["probability"]["per_query"]["entropy"]["mean"] > 0.97
    assert out["logit"]["per_query"]["entropy"]["mean"] < out["tempered"]["per_query"]["entropy"]["mean"]
    assert out["probability"]["describe"]["extreme_low_cut"] == pytest.approx(0.05)
    json.dumps(out, allow_nan=False)


def test_scale_sensitivity_sees_float32_sigmoid_ties() -> None:
    u = np.array([[18.0, 20.0, 25.0, 1.0]])  # sigmoid rounds the first three to exactly 1.0 in float32
    out = scale_sensitivity(u)
    tau_b = stats.kendalltau([18.0, 20.0, 25.0, 1.0], [1.0, 1.0, 1.0, 0.7]).statistic
    assert out["probability"]["order_tau"]["mean"] == pytest.approx(tau_b) and tau_b < 1.0
    assert out["tempered"]["order_tau"]["mean"] == pytest.approx(1.0)


def test_scale_sensitivity_respects_masks() -> None:
    u = np.array([[3.0, 1.0, np.nan], [0.0, 2.0, 1.0]])
    valid = np.array([[True, True, False], [True, True, True]])
    negatives = np.array([[False, True, False], [False, True, True]])  # row 0 has one negative -> undefined
    out = scale_sensitivity(u, valid, negatives=negatives)
    assert out["logit"]["order_tau"]["n"] == 1
    assert out["logit"]["describe"]["n"] == 5


def test_scale_spread_hand_computed() -> None:
    results = {"kl": {"logit": [450.0, 452.0], "probability": [400.0, 404.0]},
               "cprd": {"logit": [455.0, 457.0], "probability": [456.0, 458.0], "tempered": [455.0, 459.0]}}
    out = scale_spread(results)
    assert out["kl"]["spread"] == pytest.approx(49.0)
    assert out["kl"]["pooled_std"] == pytest.approx(math.sqrt((2.0 + 8.0) / 2))
    assert out["kl"]["spread_over_std"] == pytest.approx(49.0 / math.sqrt(5.0))
    assert out["cprd"]["means"] == {"logit": 456.0, "probability": 457.0, "tempered": 457.0}
    assert scale_spread({"x": {"logit": [1.0], "probability": [2.0]}})["x"]["pooled_std"] is None
    with pytest.raises(ValueError, match="at least one teacher view"):
        scale_spread({"kl": {}})


def test_paired_difference_by_seed_and_its_interval():
    from workbench.findings.stats import paired_difference, seed_stats

    a, b = {0: 10.0, 1: 12.25, 2: 11.0, 5: 99.0}, {0: 9.0, 1: 11.0, 2: 9.5}
    d = paired_difference(a, b)  # seed 5 has no partner
    assert d["seeds"] == [0, 1, 2] and d["values"] == [1.0, 1.25, 1.5] and d["n"] == 3
    assert d["mean"] == pytest.approx(1.25) and d["std"] == pytest.approx(0.25)
    half = 4.302652729911275 * 0.25 / np.sqrt(3)  # t(0.975, 2 dof) x std / sqrt(n)
    assert d["ci95"] == pytest.approx([1.25 - half, 1.25 + half]) and d["excludes_zero"] is True
    assert paired_difference([1.0, 2.0, 1.0], [0.0, 0.0, 0.0])["excludes_zero"] is False  # CI [-0.10, 2.77]
    one = seed_stats([3.0])
    assert one == {"mean": 3.0, "std": None, "n": 1, "values": [3.0], "ci95": None}
    with pytest.raises(ValueError, match="one value per seed each"):
        paired_difference([1.0], [1.0, 2.0])


def test_plateau_step_finds_the_first_step_within_tolerance():
    from workbench.findings.stats import plateau_step

    steps = [100, 200, 300, 400, 500, 600]
    curve = [50.0, 80.0, 95.0, 99.5, 100.0, 100.0]
    out = plateau_step(steps, curve, tolerance=0.01)
    assert out["plateau"] == pytest.approx(299.5 / 3) and out["step"] == 400 and out["converged_at_end"]
    rising = plateau_step(steps, [10, 20, 30, 40, 50, 60], tolerance=0.01)
    assert rising["step"] == 500 and not rising["converged_at_end"]  # the "plateau" is only the end: still rising
