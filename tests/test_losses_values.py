"""Values: hand-computed cases per loss, naive-loop oracles (value and gradient), and properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_losses_support import make_batch, random_slates

from workbench.losses import ScoreBatch, get_loss, ranking

T, F_ = True, False


def one(name: str, s, u=None, pos=None, valid=None, **kw) -> float:
    """Loss ``name`` on a hand-written slate (lists), as a float."""
    s = torch.tensor(s, dtype=torch.float64).reshape(-1, len(s[0]) if isinstance(s[0], list) else len(s))
    u = None if u is None else torch.tensor(u, dtype=torch.float64).reshape(s.shape)
    pos = torch.tensor(pos).reshape(s.shape)
    valid = None if valid is None else torch.tensor(valid).reshape(s.shape)
    terms = get_loss(name, **kw)(ScoreBatch(student=s, teacher=u, positive=pos, mask=valid))
    return sum(terms.values()).item()


def nll(x: float, *rest: float) -> float:
    """-log( e^x / (e^x + sum e^rest) )."""
    return -x + math.log(math.exp(x) + sum(math.exp(r) for r in rest))


# ------------------------------------------------------------------------------------------- hand-computed


def test_infonce_by_hand():
    s = [[2.0, 1.0, 0.0, 9.0], [2.0, 1.0, 0.0, -1.0]]
    pos = [[T, F_, F_, F_], [T, T, F_, F_]]
    valid = [[T, T, T, F_], [T, T, T, F_]]
    row0 = nll(2, 1, 0)
    row1 = -math.log((math.e**2 + math.e) / (math.e**2 + math.e + 1))
    assert one("infonce", s, pos=pos, valid=valid) == pytest.approx((row0 + row1) / 2)


def test_infonce_equals_cross_entropy_with_one_positive():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(16, 10, generator=g, dtype=torch.float64) * 4
    target = torch.randint(0, 10, (16,), generator=g)
    pos = F.one_hot(target, 10).bool()
    got = get_loss("infonce")(ScoreBatch(student=s, positive=pos))["itc_loss"]
    torch.testing.assert_close(got, F.cross_entropy(s, target))


def test_kl_by_hand():
    # row 0: u = [1, 0] at T_t = 1, s = [0, 0]; row 1: T_t = 2, T_s = 0.5 on u = [2, 0, pad], s = [1, 0, pad]
    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))

    def softmax(x):
        z = sum(math.exp(v) for v in x)
        return [math.exp(v) / z for v in x]

    assert one("kl", [[0.0, 0.0]], [[1.0, 0.0]], [[T, F_]]) == pytest.approx(kl(softmax([1, 0]), [0.5, 0.5]))
    got = one("kl", [[1.0, 0.0, 5.0]], [[2.0, 0.0, 3.0]], [[F_, F_, F_]], [[T, T, F_]], teacher_temperature=2.0,
              student_temperature=0.5)
    assert got == pytest.approx(kl(softmax([1, 0]), softmax([2, 0])))


def test_mse_by_hand():
    s = [[1.0, 2.0, 3.0], [0.0, 1.0, 9.0]]
    u = [[0.0, 2.0, 5.0], [1.0, 1.0, 0.0]]
    pos = [[T, F_, F_], [F_, F_, F_]]
    valid = [[T, T, T], [T, T, F_]]
    assert one("mse", s, u, pos, valid) == pytest.approx((1 + 0 + 4 + 1 + 0) / 5)
    # z-scores: [1, 2, 3] and [0, 2, 4] both give z = [-a, 0, a] with a = sqrt(3/2); [3, 2, 1] gives -z,
    # so the mean of (2 z)^2 is 4 * (3/2 + 0 + 3/2) / 3 = 4
    assert one("mse", [[1.0, 2.0, 3.0]], [[0.0, 2.0, 4.0]], [[T, F_, F_]], standardize=True) == pytest.approx(0)
    assert one("mse", [[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]], [[T, F_, F_]], standardize=True) == pytest.approx(4)


def test_margin_mse_by_hand():
    s = [[3.0, 1.0, 0.0, 4.0]]
    u = [[0.9, 0.2, 0.5, 0.0]]
    pos = [[T, F_, F_, T]]
    valid = [[T, T, T, F_]]  # the second positive is padding
    expected = (((3 - 1) - (0.9 - 0.2)) ** 2 + ((3 - 0) - (0.9 - 0.5)) ** 2) / 2
    assert one("margin_mse", s, u, pos, valid) == pytest.approx(expected)


def test_ranknet_by_hand():
    s = [[9.0, 1.0, 0.0, 2.0]]
    u = [[0.0, 0.9, 0.2, 0.5]]
    pos = [[T, F_, F_, F_]]

    def sp(x):
        return math.log1p(math.exp(-x))

    expected = (sp(1 - 0) + sp(1 - 2) + sp(2 - 0)) / 3  # pairs (0.9>0.2), (0.9>0.5), (0.5>0.2)
    assert one("ranknet", s, u, pos) == pytest.approx(expected)
    assert one("ranknet", s, u, pos, temperature=2.0) == pytest.approx((sp(0.5) + sp(-0.5) + sp(1.0)) / 3)
    # teacher ties make no pair: only (0.9 > 0.2)
    assert one("ranknet", s, [[0.0, 0.9, 0.2, 0.9]], pos) == pytest.approx((sp(1 - 0) + sp(2 - 0)) / 2)


def test_listnet_by_hand():
    s = [[5.0, 1.0, 0.0]]
    u = [[0.9, 1.0, 0.0]]
    pos = [[T, F_, F_]]
    p = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax(u) over the negatives
    q = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax(s) over the negatives
    assert one("listnet", s, u, pos) == pytest.approx(-sum(a * math.log(b) for a, b in zip(p, q, strict=True)))
    p2 = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    q2 = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    got = one("listnet", s, u, pos, teacher_temperature=2.0, temperature=0.5)
    assert got == pytest.approx(-sum(a * math.log(b) for a, b in zip(p2, q2, strict=True)))


# a slate: positive at 0; negatives 1..4 with teacher order 1 (0.9), 3 (0.7), 4 (0.4), 2 (0.2)
S = [[3.0, 1.0, 0.0, 2.0, -1.0]]
U = [[0.99, 0.9, 0.2, 0.7, 0.4]]
P = [[T, F_, F_, F_, F_]]


def test_listmle_by_hand():
    expected = nll(1, 2, -1, 0) + nll(2, -1, 0) + nll(-1, 0)  # the last step, 0 alone, is -log 1 = 0
    assert one("listmle", S, U, P, normalize="none") == pytest.approx(expected)
    assert one("listmle", S, U, P) == pytest.approx(expected / 4)  # the default: the mean of its 4 steps
    half = [[x / 2 for x in S[0]]]
    assert one("listmle", S, U, P, temperature=2.0) == pytest.approx(one("listmle", half, U, P))


def test_cprd_by_hand():
    step1, step2 = nll(1, 2, -1, 0), nll(2, -1, 0)

    def summed(**kw) -> float:
        return one("cprd", S, U, P, normalize="none", **kw)

    assert one("cprd", S, U, P) == pytest.approx((step1 + step2) / 2)  # the default averages its steps
    assert summed() == pytest.approx(step1 + step2)  # threshold 0.5: 0.9 and 0.7 are valid
    assert summed(threshold=0.8) == pytest.approx(step1)
    assert summed(threshold=0.7) == pytest.approx(step1 + step2)  # u >= threshold is valid
    assert summed(threshold=0.95) == 0  # no valid hard negative
    assert summed(validity="top", m=1) == pytest.approx(step1)
    assert summed(validity="top", m=3) == pytest.approx(step1 + step2 + nll(-1, 0))
    assert one("cprd", S, U, P, validity="all") == pytest.approx(one("listmle", S, U, P))
    halved = nll(0.5, 1, -0.5, 0) + nll(1, -0.5, 0)
    assert summed(temperature=2.0) == pytest.approx(halved)


def test_cprd_chain_by_hand():
    """Positive first, then the valid negatives in teacher order, the rest below: steps averaged by default."""
    step0 = nll(3, 1, 0, 2, -1)  # the positive (3) against the whole slate
    step1, step2 = nll(1, 2, -1, 0), nll(2, -1, 0)  # then CPRD's top-2 (columns 1 and 3)
    chain = one("cprd_chain", S, U, P, validity="top", m=2, normalize="none")
    assert chain == pytest.approx(step0 + step1 + step2)
    assert one("cprd_chain", S, U, P, validity="top", m=2) == pytest.approx((step0 + step1 + step2) / 3)
    itc_plus_cprd = one("infonce", S, U, P) + one("cprd", S, U, P, validity="top", m=2, normalize="none")
    assert chain == pytest.approx(itc_plus_cprd)


def test_cprd_chain_equals_infonce_plus_cprd_on_random_slates():
    """Equal on rows that hold a positive (a chain starts at the positive; rows without one contribute 0)."""
    for seed in range(3):
        slates = random_slates(seed)
        slates["mask"][:, 0] = True  # every row's positive exists (row 3 was all padding: NaN scores)
        slates["student"][:, 0], slates["teacher"][:, 0] = 1.5, 0.9
        for kw in ({"validity": "top", "m": 3}, {"validity": "all"}, {"validity": "threshold", "threshold": 0.4}):
            chain = loss_value("cprd_chain", slates, normalize="none", **kw)
            itc = get_loss("infonce")(make_batch(slates, grad=False))["itc_loss"]
            parts = itc + loss_value("cprd", slates, normalize="none", **kw)
            torch.testing.assert_close(chain, parts)


def test_cprd_ties_put_the_lower_slate_index_first():
    u = [[0.99, 0.7, 0.2, 0.7, 0.4]]  # columns 1 and 3 tie: 1 first, then 3
    assert one("cprd", S, u, P, normalize="none") == pytest.approx(nll(1, 2, -1, 0) + nll(2, -1, 0))
    u = [[0.99, 0.7, 0.2, 0.7, 0.4]]
    s_swapped = [[3.0, 2.0, 0.0, 1.0, -1.0]]  # now column 1 holds 2 and column 3 holds 1
    assert one("cprd", s_swapped, u, P, normalize="none") == pytest.approx(nll(2, 1, -1, 0) + nll(1, -1, 0))


def test_cprd_batch_mean_counts_rows_without_valid_negatives():
    two_rows = [S[0], [0.0, 5.0, 1.0, 2.0, 3.0]]
    u = [U[0], [0.9, 0.1, 0.1, 0.2, 0.3]]  # row 1: no negative reaches 0.5
    assert one("cprd", two_rows, u, [P[0], P[0]]) == pytest.approx(one("cprd", S, U, P) / 2)


# ------------------------------------------------------------------------------------------------- oracles


def naive_steps(s, u, pos, valid, i, validity, threshold, m):
    """Row i's negatives in teacher order (ties: lower index first) and how many steps are valid."""
    negs = [k for k in range(s.shape[1]) if valid[i, k] and not pos[i, k]]
    negs.sort(key=lambda k: (-float(u[i, k]), k))
    J = {"all": len(negs), "top": min(m, len(negs)), "threshold": sum(float(u[i, k]) >= threshold for k in negs)}
    return negs, J[validity]


def naive_cprd(batch, validity="threshold", threshold=0.5, m=4, temperature=1.0, normalize="steps"):
    s, u, pos, valid = batch.student, batch.teacher, batch.positive, batch.mask
    rows = []
    for i in range(s.shape[0]):
        negs, J = naive_steps(s, u, pos, valid, i, validity, threshold, m)
        row = s.new_zeros(())
        for j in range(J):
            rest = torch.stack([s[i, k] for k in negs[j:]]) / temperature
            row = row + torch.logsumexp(rest, 0) - s[i, negs[j]] / temperature
        rows.append(row / J if normalize == "steps" and J > 0 else row)
    return torch.stack(rows).mean()


def naive_ranknet(batch, temperature=1.0):
    s, u, neg = batch.student, batch.teacher, batch.negative
    terms = [
        torch.log1p(torch.exp(-(s[i, a] - s[i, b]) / temperature))
        for i in range(s.shape[0])
        for a in range(s.shape[1])
        for b in range(s.shape[1])
        if neg[i, a] and neg[i, b] and u[i, a] > u[i, b]
    ]
    return torch.stack(terms).mean() if terms else s.new_zeros(())


def with_ties(seed: int) -> dict:
    """Random slates whose teacher scores are rounded to one decimal, so ties are common."""
    slates = random_slates(seed)
    return dict(slates, teacher=torch.round(slates["teacher"] * 10) / 10)


def assert_matches_oracle(name, oracle, slates, **kw):
    fast, slow = make_batch(slates), make_batch(slates)
    value = get_loss(name, **kw)(fast)["distill_loss"]
    expected = oracle(slow, **kw)
    value.backward()
    expected.backward()
    torch.testing.assert_close(value, expected)
    grad_slow = torch.where(slow.mask, slow.student.grad, 0.0)  # the oracle never touches padding
    torch.testing.assert_close(fast.student.grad, grad_slow)


CPRD_SETTINGS = [
    {},
    {"threshold": 0.3},
    {"validity": "top", "m": 1},
    {"validity": "top", "m": 3, "temperature": 0.5},
    {"validity": "all"},
    {"normalize": "none"},
    {"validity": "top", "m": 2, "normalize": "none", "temperature": 2.0},
]


@pytest.fixture(params=["sort", "narrow", "no_sync"])
def ordering(request, monkeypatch):
    """Run a test through every way of ordering the valid negatives.

    ``sort``: full stable sort, k = max J; ``narrow``: top-k narrowing then a small sort; ``no_sync``: what a GPU
    does (k = L, full stable sort, no host read of max J).
    """
    monkeypatch.setattr(ranking, "NARROW_BELOW", 0.0 if request.param == "sort" else 2.0)
    if request.param == "no_sync":
        monkeypatch.setattr(ranking, "NARROW_DEVICES", ())
    return request.param


@pytest.mark.parametrize("kw", CPRD_SETTINGS, ids=str)
@pytest.mark.parametrize("make", [random_slates, with_ties], ids=["distinct", "ties"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cprd_matches_naive_loop(kw, make, seed, ordering):
    assert_matches_oracle("cprd", naive_cprd, make(seed), **kw)


def test_cprd_on_long_slates_with_heavy_ties(ordering):
    slates = random_slates(8, B=8, L=40)
    slates["teacher"] = torch.round(slates["teacher"] * 4) / 4  # five distinct values: ties everywhere
    for kw in ({"validity": "top", "m": 5}, {"threshold": 0.7}, {"validity": "all", "normalize": "steps"}):
        assert_matches_oracle("cprd", naive_cprd, slates, **kw)


@pytest.mark.parametrize("make", [random_slates, with_ties], ids=["distinct", "ties"])
@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_listmle_matches_naive_loop(make, temperature, ordering):
    def oracle(batch, temperature, normalize="steps"):
        return naive_cprd(batch, validity="all", temperature=temperature, normalize=normalize)

    assert_matches_oracle("listmle", oracle, make(4), temperature=temperature)
    assert_matches_oracle("listmle", oracle, make(5), temperature=temperature, normalize="none")


@pytest.mark.parametrize("make", [random_slates, with_ties], ids=["distinct", "ties"])
@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_ranknet_matches_naive_loop(make, temperature):
    assert_matches_oracle("ranknet", naive_ranknet, make(5), temperature=temperature)


@pytest.mark.parametrize("seed", [0, 1])
def test_suffix_steps_backward_matches_finite_differences(seed):
    g = torch.Generator().manual_seed(seed)
    B, k = 5, 6
    J = torch.tensor([0, 1, 3, 6, 4])
    step = torch.arange(k) < J[:, None]
    x = torch.where(step, torch.randn(B, k, generator=g, dtype=torch.float64) * 3, float("-inf"))
    rest = torch.randn(B, 1, generator=g, dtype=torch.float64)
    rest[1] = float("-inf")  # a row with nothing below its ordered entries

    def f(x_steps, rest_finite):
        x_in = torch.where(step, x_steps, float("-inf"))
        r_in = torch.where(torch.isinf(rest), rest, rest_finite)
        return ranking.SuffixSteps.apply(x_in, r_in, step)

    x0 = x.nan_to_num(neginf=0.0).requires_grad_()
    r0 = rest.nan_to_num(neginf=0.0).requires_grad_()
    assert torch.autograd.gradcheck(f, (x0, r0))
    f(x0, r0).sum().backward()
    assert torch.isfinite(x0.grad).all() and torch.isfinite(r0.grad).all()
    assert not x0.grad[~step].any() and r0.grad[1] == 0 and not x0.grad[0].any()


def test_cprd_is_stable_for_large_scores():
    slates = random_slates(6, dtype=torch.float32)
    slates["student"] = slates["student"] * 1000  # logits far beyond exp's range
    batch = make_batch(slates)
    value = get_loss("cprd", validity="all", temperature=0.01)(batch)["distill_loss"]
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(batch.student.grad).all()


# ---------------------------------------------------------------------------------------------- properties

TRANSFORMS = {
    "exp": lambda u: torch.exp(5 * u),
    "cube": lambda u: (u - 0.3) ** 3,
    "affine": lambda u: 10 * u - 4,
    "logit": lambda u: torch.log(u / (1 - u)),
}
RANK_LOSSES = [("ranknet", {}), ("listmle", {}), ("cprd", {"validity": "top", "m": 3}), ("cprd", {"validity": "all"})]


def loss_value(name, slates, **kw):
    return get_loss(name, **kw)(make_batch(slates, grad=False))["distill_loss"]


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize(("name", "kw"), RANK_LOSSES, ids=lambda x: str(x))
def test_rank_losses_ignore_monotone_teacher_transforms(name, kw, transform):
    for seed in range(3):
        slates = random_slates(seed)
        moved = dict(slates, teacher=transform(slates["teacher"]))
        torch.testing.assert_close(loss_value(name, moved, **kw), loss_value(name, slates, **kw), rtol=0, atol=0)


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_cprd_threshold_moves_with_the_transform(transform):
    slates = random_slates(7)
    moved = dict(slates, teacher=transform(slates["teacher"]))
    theta = float(transform(torch.tensor(0.5, dtype=torch.float64)))
    torch.testing.assert_close(loss_value("cprd", moved, threshold=theta), loss_value("cprd", slates))


@pytest.mark.parametrize("name", ["kl", "mse"])
def test_logit_losses_change_under_monotone_transforms(name):
    slates = random_slates(0)
    for transform in (TRANSFORMS["exp"], TRANSFORMS["cube"]):
        moved = dict(slates, teacher=transform(slates["teacher"]))
        assert not torch.isclose(loss_value(name, moved), loss_value(name, slates))


def test_mse_standardized_ignores_affine_teacher_changes_per_row():
    slates = random_slates(1)
    scale = torch.rand(slates["teacher"].shape[0], 1, dtype=torch.float64) * 5 + 0.5
    moved = dict(slates, teacher=slates["teacher"] * scale + 3)
    torch.testing.assert_close(loss_value("mse", moved, standardize=True), loss_value("mse", slates, standardize=True))
    assert not torch.isclose(loss_value("mse", moved), loss_value("mse", slates))


def test_listnet_is_kl_over_the_negatives_plus_the_teacher_entropy():
    slates = dict(random_slates(4), positive=torch.zeros(6, 9, dtype=torch.bool))  # every valid entry a negative
    u, valid = slates["teacher"], slates["mask"]
    p = torch.softmax(torch.where(valid, u, float("-inf")), dim=-1)
    entropy = torch.where(valid, -p * p.log(), 0.0).sum(dim=-1).nan_to_num().mean()
    torch.testing.assert_close(loss_value("listnet", slates), loss_value("kl", slates) + entropy)


def test_margin_mse_ignores_a_teacher_shift_per_row_but_not_a_rescaling():
    slates = random_slates(5)
    shift = torch.randn(slates["teacher"].shape[0], 1, dtype=torch.float64) * 10
    moved = dict(slates, teacher=slates["teacher"] + shift)
    torch.testing.assert_close(loss_value("margin_mse", moved), loss_value("margin_mse", slates))
    scaled = dict(slates, teacher=slates["teacher"] * 3)
    assert not torch.isclose(loss_value("margin_mse", scaled), loss_value("margin_mse", slates))


def test_kl_and_mse_ignore_the_positive_mask():
    slates = random_slates(2)
    flipped = dict(slates, positive=~slates["positive"])
    for name in ("kl", "mse"):
        torch.testing.assert_close(loss_value(name, flipped), loss_value(name, slates))


def test_cprd_normalize_steps_divides_each_row_by_its_steps():
    slates = random_slates(3)
    steps = ((slates["teacher"] >= 0.5) & slates["mask"] & ~slates["positive"]).sum(dim=1)  # J per row
    assert (steps >= 2).any() and (steps == 0).any()
    for i, J in enumerate(steps.tolist()):
        row = {k: v[i : i + 1] for k, v in slates.items()}
        expected = loss_value("cprd", row, normalize="none") / max(J, 1)
        torch.testing.assert_close(loss_value("cprd", row, normalize="steps"), expected)
