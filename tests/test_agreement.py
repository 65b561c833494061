"""Finding 2 agreement: vectorised Kendall tau-b against scipy (with ties and masks), hand cases, summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from workbench.findings.agreement import agreement_summary, agreement_taus, kendall_tau_rows, tau_summary


def _scipy_rows(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = []
    for q in range(len(a)):
        x, y = a[q][valid[q]], b[q][valid[q]]
        out.append(stats.kendalltau(x, y, variant="b").statistic if len(x) >= 2 else np.nan)
    return np.array(out, dtype=float)


@pytest.mark.parametrize("seed", range(6))
def test_kendall_tau_rows_matches_scipy_with_ties_and_masks(seed) -> None:
    rng = np.random.default_rng(seed)
    q, length = 60, int(rng.integers(2, 12))
    a = rng.integers(0, 4, (q, length)).astype(float)  # few levels: many ties
    b = np.where(rng.random((q, length)) < 0.5, a, rng.integers(0, 3, (q, length))).astype(float)
    valid = rng.random((q, length)) < 0.75
    a[~valid] = np.nan  # padding may hold anything
    got = kendall_tau_rows(a, b, valid, block=int(rng.integers(1, 50)))
    want = _scipy_rows(a, b, valid)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], atol=1e-12)


def test_kendall_tau_rows_continuous_scores_match_scipy() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(size=(30, 16))
    b = a + rng.normal(size=(30, 16))
    np.testing.assert_allclose(kendall_tau_rows(torch.tensor(a), b), _scipy_rows(a, b, np.ones_like(a, bool)))


def test_kendall_tau_rows_hand_cases() -> None:
    a = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0],
                  [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]])
    b = np.array([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0],
                  [0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    valid = np.ones_like(a, dtype=bool)
    valid[2, 1:] = False  # one valid entry: undefined
    tau = kendall_tau_rows(a, b, valid)
    assert tau[0] == 1.0 and tau[1] == -1.0
    assert np.isnan(tau[2]) and np.isnan(tau[3]) and np.isnan(tau[4])  # too few / constant a / constant b
    assert tau[5] == pytest.approx(4 / 6)  # one discordant pair of six: (C - D) / 6 = (5 - 1) / 6
    # ties in one order only: a = (1, 1, 2), b = (1, 2, 3): C = 2, D = 0, n0 = 3, n_a = 1 -> 2 / sqrt(2 * 3)
    assert kendall_tau_rows([[1.0, 1.0, 2.0]], [[1.0, 2.0, 3.0]])[0] == pytest.approx(2 / np.sqrt(6))


def test_kendall_tau_rows_is_invariant_to_monotone_transforms() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(20, 10)), rng.normal(size=(20, 10))
    np.testing.assert_allclose(kendall_tau_rows(a, b), kendall_tau_rows(np.exp(a), 3 * b - 1))
    np.testing.assert_allclose(kendall_tau_rows(a, b), kendall_tau_rows(b, a))
    np.testing.assert_allclose(kendall_tau_rows(a, -b), -kendall_tau_rows(a, b))


def test_kendall_tau_rows_edge_shapes_and_bad_input() -> None:
    assert np.isnan(kendall_tau_rows(np.zeros((3, 1)), np.zeros((3, 1)))).all()
    assert kendall_tau_rows(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0,)
    with pytest.raises(ValueError, match="b must have shape"):
        kendall_tau_rows(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="a must have 2 dimension"):
        kendall_tau_rows(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="a must be finite"):
        kendall_tau_rows(np.array([[1.0, np.nan]]), np.zeros((1, 2)))
    with pytest.raises(TypeError, match="valid must be a bool array"):
        kendall_tau_rows(np.zeros((1, 2)), np.zeros((1, 2)), np.ones((1, 2)))


def test_tau_summary_hand_computed() -> None:
    s = tau_summary([0.5, 1.0, np.nan, 0.0])
    assert s["mean"] == pytest.approx(0.5) and s["std"] == pytest.approx(0.5) and s["median"] == 0.5
    assert s["n"] == 3 and s["n_undefined"] == 1 and s["sem"] == pytest.approx(0.5 / np.sqrt(3))
    assert s["p_zero"] == pytest.approx(stats.ttest_1samp([0.5, 1.0, 0.0], 0.0).pvalue)
    empty = tau_summary([np.nan, np.nan])
    assert empty["mean"] is None and empty["n"] == 0 and empty["p_zero"] is None
    json.dumps(empty, allow_nan=False)


def _world_like(seed: int, q: int = 400, k: int = 8):
    """Slates of k hard + k easy negatives: the teacher follows relevance on hard, is noise on easy."""
    rng = np.random.default_rng(seed)
    rel = np.concatenate([rng.integers(0, 4, (q, k)) / 4, rng.integers(0, 4, (q, k)) / 4], 1)
    teacher = np.concatenate([rel[:, :k] * 5 + rng.normal(0, 0.3, (q, k)), rng.normal(0, 1, (q, k))], 1)
    student = rel + rng.normal(0, 0.5, rel.shape)
    hard = np.zeros_like(rel, dtype=bool)
    hard[:, :k] = True
    return teacher, student, rel, hard, ~hard


def test_agreement_summary_separates_informative_from_noisy_windows() -> None:
    teacher, student, rel, hard, easy = _world_like(0)
    out = agreement_summary(teacher, student, rel, hard, easy)
    assert out["hard"]["teacher_relevance"]["mean"] > 0.6 and out["hard"]["teacher_relevance"]["p_zero"] < 1e-10
    assert abs(out["easy"]["teacher_relevance"]["mean"]) < 0.05 and out["easy"]["teacher_relevance"]["p_zero"] > 1e-3
    assert out["hard_minus_easy"]["teacher_relevance"] > 0.6
    assert out["easy"]["student_relevance"]["mean"] > 0.3  # the student's own order holds truth on both
    json.dumps(out, allow_nan=False)


def test_agreement_taus_is_rowwise_kendall_over_each_window() -> None:
    teacher, student, rel, hard, easy = _world_like(1, q=30, k=5)
    taus = agreement_taus(teacher, student, rel, hard, easy)
    np.testing.assert_allclose(taus["hard"]["teacher_student"], _scipy_rows(teacher, student, hard))
    np.testing.assert_allclose(taus["easy"]["student_relevance"], _scipy_rows(student, rel, easy), equal_nan=True)
    with pytest.raises(ValueError, match="relevance must have shape"):
        agreement_taus(teacher, student, rel[:, :3], hard, easy)


def test_accuracy_by_gap_hand_case():
    from workbench.findings.agreement import accuracy_by_gap

    teacher = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 5.0]])
    relevance = np.array([[1.0, 0.5, 0.5, 0.0], [1.0, 0.5, 0.0, 0.0]])
    mask = np.array([[True, True, True, True], [True, True, True, False]])
    out = accuracy_by_gap(teacher, relevance, mask, resamples=50)
    # row 0: gaps .5 (0-1, 0-2, 1-3, 2-3: all right), 1.0 (0-3: right), tie (1-2); row 1: gap .5 (0-1, 1-2: wrong),
    # gap 1.0 (0-2: wrong)
    assert out["gap 0.50"]["pairs"] == 6 and out["gap 0.50"]["accuracy"] == pytest.approx(4 / 6)
    assert out["gap 1.00"]["pairs"] == 2 and out["gap 1.00"]["accuracy"] == pytest.approx(1 / 2)
    assert out["tie"] == {"pairs": 1, "share": pytest.approx(1 / 9)}
    low, high = out["gap 0.50"]["ci95"]
    assert 0.0 <= low <= 4 / 6 <= high <= 1.0


def test_tie_stability_same_reversed_and_ties():
    from workbench.findings.agreement import tie_stability

    a = np.array([[1.0, 2.0, 3.0, 4.0]])
    relevance = np.array([[0.0, 0.0, 0.0, 1.0]])  # three tied entries, one above them
    mask = np.ones_like(a, dtype=bool)
    assert tie_stability(a, a, relevance, mask)["tied"] == {"pairs": 3, "same_order": 1.0}
    flipped = np.array([[3.0, 2.0, 1.0, 4.0]])  # the tie order reversed, the informative order kept
    out = tie_stability(a, flipped, relevance, mask)
    assert out["tied"]["same_order"] == 0.0 and out["untied"] == {"pairs": 3, "same_order": 1.0}
    assert tie_stability(a, np.array([[1.0, 1.0, 1.0, 4.0]]), relevance, mask)["tied"]["same_order"] == 0.5
