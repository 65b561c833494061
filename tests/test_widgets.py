"""The loss playground's logic (hand cases, naive-loop oracles for values and gradients), the widgets built
headless (build, set a value, assert the output changed), the train panel's stop button, ``StopTraining``, and the
exploration helpers of notebooks 01 / 02 / 05 (hand cases and loop oracles) with their explorer and query viewer."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace
from typing import Literal

import numpy as np
import pytest
import torch

from workbench.data.world import WorldConfig
from workbench.evaluation.embed import embed_split
from workbench.evaluation.slates import EvalSlates, build_eval_slates, slate_scores
from workbench.experiments import DEFAULT_TEACHER, open_workspace
from workbench.experiments.reproduce import demo_checkpoints
from workbench.experiments.runs import ensure_students
from workbench.findings.agreement import (
    agreement_summary,
    agreement_table,
    agreement_taus,
    pair_statistics,
    window_ranks,
    window_table,
)
from workbench.findings.distributions import TEACHER, describe, distribution_table, score_view, teacher_view_table
from workbench.interactive import FigureView, LossPlayground, QueryViewer, ScoreExplorer, TrainPanel
from workbench.interactive import playground as pg
from workbench.interactive.figure_view import loss_param_controls, new_figure
from workbench.interactive.query_viewer import query_frame, query_text
from workbench.interactive.real_models import real_score_groups, real_sources, thumbnails
from workbench.io import load_checkpoint, read_json
from workbench.losses import ScoreBatch, get_loss, register_loss, unregister_loss
from workbench.losses import in_range as pg_in_range
from workbench.losses import positive as pg_positive
from workbench.training.config import LossTerm, profile
from workbench.training.loop import StopTraining, fit

W, F = True, False



def random_cached(B: int = 10, seed: int = 0) -> pg.CachedBatch:
    """A synthetic cached batch: random scores, a few extra positives off the diagonal."""
    g = torch.Generator().manual_seed(seed)
    sim = torch.randn(B, B, generator=g, dtype=torch.float64) * 3
    positive = torch.eye(B, dtype=torch.bool)
    positive[0, 1] = positive[3, 2] = True
    logit = torch.randn(B, B, generator=g, dtype=torch.float64) * 4
    return pg.CachedBatch(sim=sim, positive=positive, teacher_logit=logit, teacher_prob=torch.sigmoid(logit),
                          relevance=torch.rand(B, B, generator=g, dtype=torch.float64), images=torch.arange(B),
                          captions=torch.arange(B), texts=tuple(f"caption {i}" for i in range(B)),
                          scenes=tuple(f"scene {i}" for i in range(B)))


# ------------------------------------------------------------------------------------------------ slates


def test_slate_columns_by_hand():
    s = torch.tensor([[5.0, 1.0, 3.0, 2.0], [0.0, 9.0, 4.0, 4.0], [1.0, 2.0, 0.0, 3.0]])
    positive = torch.tensor([[W, F, F, F], [F, W, F, F], [F, W, W, F]])  # row 2 has only 2 negatives
    cols, valid = pg.slate_columns(s, positive, k=3)
    assert cols.tolist() == [[0, 2, 3, 1], [1, 2, 3, 0], [2, 3, 0, 0]]  # own first; ties: lower column first
    assert valid.tolist() == [[W, W, W, W], [W, W, W, W], [W, W, W, F]]
    cols, valid = pg.slate_columns(s, positive, k=6)  # more than there are columns: padded
    assert cols.shape == (3, 7) and valid.sum(1).tolist() == [4, 4, 3]


def test_cached_batch_rejects_bad_input():
    good = random_cached(4)
    with pytest.raises(ValueError, match="positive must be True on the diagonal"):
        pg.CachedBatch(**{**good.__dict__, "positive": torch.zeros(4, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"sim must be a square"):
        pg.CachedBatch(**{**good.__dict__, "sim": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match="teacher_prob must have shape"):
        pg.CachedBatch(**{**good.__dict__, "teacher_prob": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="texts and scenes must hold B=4"):
        pg.CachedBatch(**{**good.__dict__, "texts": ("a",)})
    with pytest.raises(ValueError, match="direction must be one of"):
        good.oriented("both", "sim")


@pytest.mark.parametrize(("change", "message"), [
    ({"k": 0}, "k must be >= 1"), ({"validity": "best"}, "validity must be one of"),
    ({"temperature": 0.0}, "temperature must be > 0"), ({"lam": -1.0}, "lam must be >= 0"),
    ({"teacher_output": "tempered"}, "teacher_output must be one of"),
])
def test_settings_name_the_bad_value(change, message):
    with pytest.raises((ValueError, TypeError), match=message):
        pg.Settings.of(**change)


# ------------------------------------------------------------------------------------- objective: oracles


def naive_cprd(s: torch.Tensor, u: torch.Tensor, ordered: torch.Tensor, negative: torch.Tensor, T: float):
    """Per-row loop: the docs/method.md CPRD formula written out (the mean of each row's steps, the default),
    invalid negatives only in denominators."""
    total = s.new_zeros(())
    for i in range(s.shape[0]):
        valid = sorted((j for j in range(s.shape[1]) if ordered[i, j]), key=lambda j, i=i: (-float(u[i, j]), j))
        below = [j for j in range(s.shape[1]) if negative[i, j] and not ordered[i, j]]
        row = s.new_zeros(())
        for n, j in enumerate(valid):
            rest = valid[n:] + below
            row = row - s[i, j] / T + torch.logsumexp(torch.stack([s[i, r] / T for r in rest]), 0)
        total = total + row / max(len(valid), 1)
    return total / s.shape[0]


def naive_itc(s: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    rows = [torch.logsumexp(s[i], 0) - torch.logsumexp(s[i][positive[i]], 0) for i in range(s.shape[0])]
    return torch.stack(rows).mean()


@pytest.mark.parametrize("settings", [
    pg.Settings.of(k=4, validity="threshold", threshold=0.0, temperature=0.7, lam=0.5),
    pg.Settings.of(k=6, validity="top", m=2, lam=2.0, teacher_output="probability"),
    pg.Settings.of(k=3, validity="all"),
])
def test_objective_matches_a_naive_loop_in_value_and_gradient(settings):
    cached = random_cached()
    obj = pg.objective(cached, settings)
    for d in pg.DIRECTIONS:
        res = obj.directions[d]
        s = cached.oriented(d, "sim").clone().requires_grad_(True)
        u = cached.teacher(d, settings.teacher_output)
        cols = res.columns
        slate_s, slate_u = s.gather(1, cols), u.gather(1, cols)
        ordered = pg.ordered_negatives(res.batch, settings)
        itc = naive_itc(s, cached.oriented(d, "positive"))
        cprd = naive_cprd(slate_s, slate_u, ordered, res.batch.negative, settings.params["temperature"])
        assert math.isclose(res.itc, itc.item(), rel_tol=1e-9) and math.isclose(res.distill, cprd.item(), rel_tol=1e-9)
        g_itc, g_cprd = (torch.autograd.grad(v, s, retain_graph=True)[0].gather(1, cols) for v in (itc, cprd))
        torch.testing.assert_close(res.grad_itc, torch.where(res.batch.mask, g_itc, 0.0))
        torch.testing.assert_close(res.grad_distill, torch.where(res.batch.mask, g_cprd, 0.0))
        torch.testing.assert_close(res.grad, res.grad_itc + settings.lam * res.grad_distill)
    assert math.isclose(obj.total, obj.itc + settings.lam * obj.distill)
    assert math.isclose(obj.itc, sum(r.itc for r in obj.directions.values()) / 2)


def test_validity_all_equals_listmle_and_invalid_negatives_are_only_pushed_down():
    cached = random_cached(seed=3)
    s = pg.Settings.of(k=7, validity="all")
    assert math.isclose(pg.objective(cached, s).distill, pg.objective(cached, s, get_loss("listmle")).distill,
                        rel_tol=1e-12)
    res = pg.objective(cached, s.with_(validity="threshold", threshold=0.0)).directions["t2i"]
    invalid = res.batch.negative & ~pg.ordered_negatives(res.batch, s.with_(validity="threshold", threshold=0.0))
    assert invalid.any() and (res.grad_distill[invalid] >= 0).all()
    torch.testing.assert_close(res.grad_distill.sum(1), torch.zeros(cached.size, dtype=torch.float64))


def test_a_loss_without_grad_gives_zero_gradients():
    @register_loss("constant_for_test", needs_teacher=False)
    def constant(batch: ScoreBatch) -> dict[str, torch.Tensor]:
        """A loss that ignores the scores."""
        return {"distill_loss": torch.tensor(1.5)}

    try:
        res = pg.objective(random_cached(), pg.Settings.of(k=3), get_loss("constant_for_test")).directions["i2t"]
        assert res.distill == 1.5 and not res.grad_distill.any()
    finally:
        unregister_loss("constant_for_test")


def test_implied_order_lists_valid_negatives_in_teacher_order_then_the_invalid_ones():
    cached = random_cached(seed=5)
    settings = pg.Settings.of(k=6, validity="threshold", threshold=0.0)
    res = pg.objective(cached, settings).directions["i2t"]
    for q in range(cached.size):
        table = pg.implied_order(cached, settings, res, q)
        assert table.role.iloc[0] == "positive" and table.candidate.iloc[0] == q
        valid = table[table.role == "valid"]
        assert list(valid.target) == list(range(1, len(valid) + 1))
        assert list(valid.teacher) == sorted(valid.teacher, reverse=True) and (valid.teacher >= 0).all()
        invalid = table[table.role == "invalid"]
        assert (invalid.teacher < 0).all() and list(table.role) == ["positive"] + ["valid"] * len(valid) + [
            "invalid"] * len(invalid)
        assert len(table) == 1 + 6 and table.text.iloc[1] == cached.texts[table.candidate.iloc[1]]
        pull = dict(zip(res.columns[q].tolist(), (-res.grad[q]).tolist(), strict=True))
        assert all(math.isclose(p, pull[c]) for c, p in zip(table.candidate, table.pull, strict=True))
    with pytest.raises(ValueError, match="query must be <= 9"):
        pg.implied_order(cached, settings, res, 10)


def test_order_agreement_by_hand():
    s = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    u = torch.tensor([[9.0, 1.0, 3.0, 2.0]])
    positive = torch.tensor([[W, F, F, F]])
    res = pg.DirectionResult("i2t", torch.arange(4)[None], ScoreBatch(student=s, positive=positive, teacher=u),
                             torch.zeros(1, 4), torch.zeros(1, 4), 0.0, 0.0, 1.0)
    # teacher: 2 > 3 > 1; student: 1 > 2 > 3 -> pairs (2,3) agree, (2,1) and (3,1) disagree
    assert math.isclose(pg.order_agreement(res, pg.Settings.of(validity="all")), 1 / 3)
    assert math.isnan(pg.order_agreement(res, pg.Settings.of(validity="top", m=1)))  # one valid: no pair


def test_compare_losses_rows_follow_their_losses():
    cached = random_cached()
    s = pg.Settings.of(k=5, validity="all")
    table = pg.compare_losses(cached, {"cprd": s.make_loss(), "listmle": get_loss("listmle"), "kl": get_loss("kl")}, s)
    assert list(table.index) == ["cprd", "listmle", "kl"]
    assert math.isclose(table.loc["cprd", "distill"], table.loc["listmle", "distill"])
    assert math.isclose(table.loc["kl", "distill"], pg.objective(cached, s, get_loss("kl")).distill)
    assert (table.grad_norm > 0).all()


# ---------------------------------------------------------------------------------- a real (tiny) world


@pytest.fixture(scope="module")
def ws():
    torch.manual_seed(0)
    return open_workspace(WorldConfig(n_train=64, n_val=16, n_test=32), DEFAULT_TEACHER)


def test_cache_batch_orients_student_and_teacher_scores(ws):
    split = ws.world.train
    student = ws.new_student()
    calls = []

    def teacher(img, cap):  # an oracle: each pair's logit encodes its (image, caption) indices
        calls.append(len(img))
        code = (img * 1000 + cap).double()
        return code, code + 0.5

    cached = pg.cache_batch(split, student, teacher, batch=8, seed=1)
    assert calls == [64]
    img, cap = cached.images, cached.captions
    torch.testing.assert_close(cached.teacher_logit, (img[:, None] * 1000 + cap[None, :]).float())
    with torch.no_grad():
        e_i, e_t = student.encode_image(split.images[img]), student.encode_text(split.tokens[cap])
        torch.testing.assert_close(cached.sim, student.logit_scale * e_i @ e_t.T)
    assert cached.positive.diagonal().all()
    assert torch.equal(cached.positive, split.relations()["semantic"].block(img, cap))
    assert torch.equal(cached.oriented("t2i", "teacher_prob"), cached.teacher_prob.T)
    assert cached.texts[2] == split.texts[cap[2]] and cached.query_text("t2i", 2) == cached.texts[2]
    with pytest.raises(ValueError, match="batch must be <= 64"):
        pg.cache_batch(split, student, teacher, batch=65)


def test_compare_runs_trains_each_term_and_writes_cli_runs(ws, tmp_path):
    terms = {"itc": None, "itc+cprd": LossTerm("cprd", 1.0, {"validity": "top", "m": 2}), "itc again": None}
    table = pg.compare_runs(ws, terms, profile("smoke", steps=2, batch=8, k=3, eval_every=1), out_dir=tmp_path)
    assert list(table.index) == ["itc", "itc+cprd", "itc again"] and table["loss"].map(math.isfinite).all()
    cfg = read_json(tmp_path / "itc+cprd" / "config.json")
    assert [t["name"] for t in cfg["fit"]["losses"]] == ["itc", "cprd"]
    assert table.loc["itc+cprd", "rsum"] == read_json(tmp_path / "itc+cprd" / "metrics.json")["rsum"]
    # same seed, same run: the student's initialisation is seeded too (train_run)
    assert table.loc["itc"].tolist() == table.loc["itc again"].tolist()


# ------------------------------------------------------------------------------------------------ widgets


def test_loss_playground_redraws_when_a_slider_moves():
    cached = random_cached(B=12)
    play = LossPlayground(cached, pg.Settings.of(k=4, validity="top", m=2))
    c = play.controls
    assert all(w.continuous_update is False for w in c.values() if hasattr(w, "continuous_update"))
    value, png, order = play.value, play.heatmap.value, play.order_html.value
    assert f"{value:.4f}" in play.loss_html.value and "wb-loss-total" in play.loss_html.value
    c["k"].value = 8
    assert play.value != value and play.heatmap.value != png
    assert math.isclose(play.value, pg.objective(cached, play.settings).total)
    c["lam"].value = 0.0
    assert math.isclose(play.value, play.result.itc)
    c["query"].value = 3
    assert play.order_html.value != order and cached.texts[3] in play.order_html.value.split("<tr")[2]  # its own
    c["direction"].value = "t2i"
    assert "scene" in play.order_html.value


def test_loss_playground_shows_only_the_active_rule_and_converts_threshold_units():
    cached = random_cached(B=12)
    play = LossPlayground(cached, pg.Settings.of(k=6, validity="threshold", threshold=0.3))
    c = play.controls
    assert c["threshold"].layout.display == "" and c["m"].layout.display == "none"
    n_valid = [int(pg.ordered_negatives(r.batch, play.settings).sum()) for r in play.result.directions.values()]
    c["teacher_output"].value = "probability"
    assert math.isclose(c["threshold"].value, 1 / (1 + math.exp(-0.3)), abs_tol=0.01)  # same cut, new units
    assert (c["threshold"].min, c["threshold"].max) == (0.0, 1.0)
    assert [int(pg.ordered_negatives(r.batch, play.settings).sum()) for r in play.result.directions.values()] == n_valid
    c["validity"].value = "top"
    assert c["threshold"].layout.display == "none" and c["m"].layout.display == ""


def test_loss_playground_clamps_k_to_what_the_batch_holds():
    cached = random_cached(B=5)
    play = LossPlayground(cached, pg.Settings.of(k=30))
    assert play.settings.k == cached.max_k() == 3 and play.controls["k"].max == 3


def test_figure_view_redraws_on_change_and_shows_errors():
    calls = []

    def draw(n: int) -> object:
        calls.append(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        fig = new_figure(2, 2)
        fig.subplots().plot(range(n + 2))
        return fig

    import ipywidgets

    view = FigureView(draw, {"n": ipywidgets.IntSlider(value=1, min=-3, max=5)})
    png = view.image.value
    view.controls["n"].value = 4
    assert calls == [1, 4] and view.image.value != png and view.error.value == ""
    view.controls["n"].value = -1
    assert "n must be &gt;= 0, got -1" in view.error.value and view.values == {"n": -1}


def test_loss_param_controls_follow_the_registry():
    cprd = loss_param_controls("cprd")
    assert list(cprd) == ["validity", "threshold", "m", "temperature", "normalize"]
    assert {"threshold", "top", "all"} <= set(cprd["validity"].options) and cprd["m"].value == 4
    assert list(cprd["normalize"].options) == ["none", "steps"]

    @register_loss("kinds_for_test", needs_teacher=False)
    def kinds(batch: ScoreBatch, *, flag: bool = True, n: int = 2, x: float = 0.5, mode: Literal["a", "b"] = "b",
              note: str = "hi") -> dict[str, torch.Tensor]:
        """Every kind of hyperparameter."""
        return {"x_loss": batch.student.sum() * 0}

    try:
        w = loss_param_controls("kinds_for_test", exclude=("note",))
        kinds_of = {k: type(v).__name__ for k, v in w.items()}
        assert kinds_of == {"flag": "Checkbox", "n": "IntText", "x": "FloatText", "mode": "Dropdown"}
        assert w["mode"].value == "b" and w["x"].value == 0.5
    finally:
        unregister_loss("kinds_for_test")


def test_train_panel_builds_the_config_its_controls_show(ws, tmp_path):
    base = profile("smoke", steps=3, batch=8, k=3, losses=(LossTerm("itc"), LossTerm("cprd", 2.0, {"m": 3})))
    panel = TrainPanel(ws, base, tmp_path, losses=("cprd", "listmle"))
    assert panel.terms["cprd"].params["m"].value == 3 and panel.terms["cprd"].weight.value == 2.0
    panel.terms["listmle"].enabled.value = True
    panel.terms["cprd"].params["validity"].value = "top"
    panel.options["steps"].value = 7
    cfg = panel.config()
    assert [t.name for t in cfg.losses] == ["itc", "cprd", "listmle"] and cfg.steps == 7
    assert cfg.losses[1].params["validity"] == "top" and cfg.losses[1].weight == 2.0
    for t in panel.terms.values():
        t.enabled.value = False
    panel.start()
    assert "pick at least one loss term" in panel.status.value and panel.run_dir is None


def test_train_panel_stop_button_ends_the_run_cleanly(ws, tmp_path):
    panel = TrainPanel(ws, profile("smoke", steps=500, batch=8, eval_every=100), tmp_path, losses=(),
                       redraw_seconds=0.0)
    png = panel.curves.value
    panel.train_button.click()
    panel.wait_for_steps(3, timeout=60)
    panel.stop_button.click()
    metrics = panel.join(timeout=60)
    done = panel.history[-1]["step"]
    assert 3 <= done < 500 and not panel.running and "stopped" in panel.status.value
    assert panel.curves.value != png and panel.stop_button.disabled and not panel.train_button.disabled
    assert "val_semantic_rsum" in panel.history[-1]  # the stop row is evaluated
    assert read_json(panel.run_dir / "metrics.json")["rsum"] == metrics["rsum"]
    assert read_json(panel.run_dir / "history.json")[-1]["step"] == done
    meta, _ = load_checkpoint(panel.run_dir / "checkpoint", kind="student")
    assert meta["step"] == done


def test_train_panel_shows_and_reraises_a_failing_run(ws, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    panel = TrainPanel(ws, profile("smoke", steps=2, batch=8), tmp_path, losses=(), train=broken)
    panel.start(thread=False)
    assert "disk full" in panel.status.value and not panel.train_button.disabled
    with pytest.raises(RuntimeError, match="disk full"):
        panel.join()


# ------------------------------------------------------------------------------------ fit + StopTraining


def test_fit_stops_cleanly_when_a_step_callback_raises(ws, tmp_path):
    def stop_at_3(step, row):
        if step == 3:
            raise StopTraining

    seen = []
    state = fit(profile("smoke", steps=50, batch=8, eval_every=2), ws.world, ws.new_student(), out_dir=tmp_path,
                evaluate=lambda s: {"val": 1.0}, step_callbacks=(stop_at_3,), callbacks=(lambda s, r: seen.append(s),))
    assert state.step == 3 and [r["step"] for r in state.history] == [2, 3] and seen == [2, 3]
    assert state.history[-1]["val"] == 1.0
    meta, _ = load_checkpoint(tmp_path / "checkpoint", kind="student")
    assert meta["step"] == 3


def test_fit_stop_from_an_evaluation_callback_logs_no_duplicate_row(ws):
    def stop(step, row):
        raise StopTraining

    state = fit(profile("smoke", steps=50, batch=8, eval_every=2), ws.world, ws.new_student(), callbacks=(stop,))
    assert state.step == 2 and [r["step"] for r in state.history] == [2]


# ------------------------------------------------------------- exploration helpers and widgets (notebooks 01, 02, 05)


def synthetic_slates(Q: int = 6, P: int = 2, K: int = 4, seed: int = 0, direction: str = "i2t") -> EvalSlates:
    """Random slates [Q, P + 2K]: P positives (query 0 has one, the other is padding), K hard, K easy; candidate
    ``q * L + l`` for entry (q, l)."""
    g = torch.Generator().manual_seed(seed)
    L = P + 2 * K
    positive, hard, easy = (torch.zeros(Q, L, dtype=torch.bool) for _ in range(3))
    positive[:, :P], hard[:, P : P + K], easy[:, P + K :] = True, True, True
    positive[0, 1] = False
    return EvalSlates(student=torch.randn(Q, L, generator=g) * 3, teacher=torch.randn(Q, L, generator=g) * 4,
                      relevance=torch.randint(0, 4, (Q, L), generator=g).float() / 3, positive=positive, hard=hard,
                      easy=easy, direction=direction, queries=torch.arange(Q),
                      candidates=torch.arange(Q * L).reshape(Q, L))


def fake_split(n: int) -> SimpleNamespace:
    """Captions ``caption i`` and scenes ``scene i`` (all query_frame needs)."""
    return SimpleNamespace(texts=[f"caption {i}" for i in range(n)],
                           scenes=[SimpleNamespace(describe=lambda i=i: f"scene {i}") for i in range(n)])


def test_eval_slates_record_the_pairs_they_score(ws):
    test = ws.world.test
    torch.manual_seed(1)
    student, other = ws.new_student(), ws.new_student()
    sl = build_eval_slates(student, ws.teacher, test, "t2i", queries=7, k_hard=4, k_easy=3, easy_rank=8, seed=2)
    img, txt = embed_split(other, test)
    naive = torch.zeros_like(sl.student)
    for q in range(len(sl.student)):
        for j in range(sl.student.shape[1]):
            naive[q, j] = other.logit_scale * txt[sl.queries[q]] @ img[sl.candidates[q, j]]
    torch.testing.assert_close(slate_scores(other, test, sl), naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slate_scores(student, test, sl), sl.student, rtol=1e-5, atol=1e-5)
    cap, im = sl.queries[:, None].expand_as(sl.candidates), sl.candidates
    rel = test.relevance_pairs(im.flatten(), cap.flatten()).reshape(im.shape)
    assert torch.equal(rel[sl.valid], sl.relevance[sl.valid])
    truth = test.relations()["semantic"].pairs(im.flatten(), cap.flatten()).reshape(im.shape)
    assert truth[sl.positive].all() and not truth[sl.hard | sl.easy].any()
    with pytest.raises(ValueError, match="must carry queries and candidates"):
        slate_scores(other, test, replace(sl, candidates=None))


def test_score_view_reads_the_teacher_three_ways():
    sl = synthetic_slates()
    students = {"itc": sl.student * 2}
    u = sl.teacher.numpy().astype(np.float64)
    x, bounds, label = score_view(sl, students, TEACHER, "probability")
    np.testing.assert_allclose(x, 1 / (1 + np.exp(-u)), rtol=1e-6)
    assert bounds == (0.0, 1.0) and label == "teacher probability"
    x, bounds, label = score_view(sl, students, TEACHER, "tempered", temperature=2.0)
    np.testing.assert_allclose(x, u / 2) and bounds is None and label == "teacher tempered (T = 2)"
    x, _, label = score_view(sl, students, "itc", "probability")  # the view does not apply to students
    np.testing.assert_allclose(x, sl.student.numpy() * 2) and label == "student itc logit"
    with pytest.raises(ValueError, match="model"):
        score_view(sl, students, "kl")
    with pytest.raises(ValueError, match="view"):
        score_view(sl, students, TEACHER, "softmax")


def test_distribution_table_describes_each_group():
    sl = synthetic_slates(Q=20)
    sl = replace(sl, easy=torch.zeros_like(sl.easy))  # no easy negatives: their rows are left out
    table = distribution_table(sl, {"a": sl.student + 1}, temperature=3.0)
    assert ("student a logit", "easy") not in table.index and len(table) == 4 * 2
    expected = describe(torch.sigmoid(sl.teacher)[sl.hard].numpy(), bounds=(0.0, 1.0))
    row = table.loc[("teacher probability", "hard")]
    assert row.n == expected["n"] == 20 * 4
    assert math.isclose(row.skewness, expected["skewness"], rel_tol=1e-6)
    assert math.isclose(row.mass_extremes, expected["mass_extremes"])
    assert math.isclose(table.loc[("student a logit", "positive"), "mean"], float((sl.student + 1)[sl.positive].mean()),
                        rel_tol=1e-5)
    views = teacher_view_table(sl, temperature=3.0)
    assert list(views.index) == ["logit", "probability", "tempered"] and views.loc["tempered", "order_tau"] == 1.0
    assert views.loc["probability", "softmax_entropy"] > views.loc["logit", "softmax_entropy"]


def test_window_ranks_by_hand():
    ranks = window_ranks(np.array([[3.0, 1.0, 3.0, 2.0, 9.0], [0.0, 5.0, 1.0, 7.0, 2.0]]),
                            np.array([[W, W, W, W, F], [F, W, F, W, W]]))
    np.testing.assert_array_equal(ranks, [[1, 4, 2, 3, np.nan], [np.nan, 2, np.nan, 1, 3]])
    with pytest.raises(ValueError, match="mask"):
        window_ranks(np.zeros((2, 3)), np.ones((3, 2), dtype=bool))


def test_query_frame_lists_positives_then_the_window_ranked():
    sl = synthetic_slates(Q=4, P=2, K=4)
    split = fake_split(4 * 10)
    frame = query_frame(sl, split, 1, "hard", "teacher")
    assert list(frame.role) == ["positive"] * 2 + ["hard"] * 4
    assert list(frame.teacher_rank[2:]) == [1, 2, 3, 4] and frame.student_rank[:2].isna().all()
    hard = sl.hard[1].numpy()
    by_student = np.argsort(-sl.student[1].numpy()[hard], kind="stable")
    cand = sl.candidates[1].numpy()[hard]
    assert dict(zip(frame.candidate[2:], frame.student_rank[2:], strict=True)) == {
        int(cand[j]): r + 1 for r, j in enumerate(by_student)}
    assert frame.text[2] == f"caption {frame.candidate[2]}" and frame.student[0] >= frame.student[1]
    mixed = query_frame(sl, split, 2, "hard+easy", "relevance")
    neg = mixed[mixed.role != "positive"]
    assert sorted(neg.student_rank) == list(range(1, 9)) and set(neg.role) == {"hard", "easy"}
    assert all((a.relevance, -a.student_rank) >= (b.relevance, -b.student_rank)
               for a, b in zip(neg.iloc[:-1].itertuples(), neg.iloc[1:].itertuples(), strict=True))
    first = query_frame(sl, split, 0, "easy")  # query 0 has one positive (the other entry is padding)
    assert list(first.role) == ["positive"] + ["easy"] * 4
    t2i = replace(sl, direction="t2i")
    assert query_frame(t2i, split, 0).text[0].startswith("scene ") and query_text(t2i, split, 3) == "caption 3"
    with pytest.raises(ValueError, match="q must be <= 3"):
        query_frame(sl, split, 4)
    with pytest.raises(ValueError, match="window"):
        query_frame(sl, split, 0, "medium")


def test_pair_statistics_by_hand():
    u = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 2.0, 3.0]])
    r = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    mask = np.array([[W, W, W], [W, W, W], [W, F, F]])
    st = pair_statistics(u, r, mask)
    np.testing.assert_array_equal(st["pairs"], [3, 3, 0])
    np.testing.assert_allclose(st["informative"][:2], [2 / 3, 2 / 3])
    # row 0: both informative pairs right; row 1: (0, 1) a teacher tie (1/2), (0, 2) wrong
    np.testing.assert_allclose(st["teacher_accuracy"][:2], [1.0, 0.25])
    sig = 1 / (1 + np.exp(-u[0]))
    gap = (abs(sig[0] - sig[1]) + abs(sig[0] - sig[2]) + abs(sig[1] - sig[2])) / 3
    assert math.isclose(st["prob_gap"][0], gap)
    assert all(np.isnan(v[2]) for k, v in st.items() if k != "pairs")


def test_pair_statistics_match_a_loop():
    rng = np.random.default_rng(0)
    u, r = rng.normal(size=(5, 7)).round(1), rng.integers(0, 3, size=(5, 7)) / 2
    mask = rng.random((5, 7)) < 0.7
    st = pair_statistics(u, r, mask)
    for q in range(5):
        idx = np.flatnonzero(mask[q])
        pairs = [(a, b) for n, a in enumerate(idx) for b in idx[n + 1 :]]
        inf = [(a, b) for a, b in pairs if r[q, a] != r[q, b]]
        right = [1.0 if np.sign(u[q, a] - u[q, b]) == np.sign(r[q, a] - r[q, b]) else 0.5 * (u[q, a] == u[q, b])
                 for a, b in inf]
        assert st["pairs"][q] == len(pairs)
        if inf:
            assert math.isclose(st["informative"][q], len(inf) / len(pairs))
            assert math.isclose(st["teacher_accuracy"][q], sum(right) / len(inf))
    table = window_table({"i2t": synthetic_slates(Q=5)})
    assert list(table.index) == [("i2t", "hard"), ("i2t", "easy")] and (table.negatives == 4).all()
    hard = synthetic_slates(Q=5)
    expected = np.nanmean(pair_statistics(hard.teacher.numpy(), hard.relevance.numpy(), hard.hard.numpy())[
        "teacher_accuracy"])
    assert math.isclose(table.loc[("i2t", "hard"), "teacher_accuracy"], expected)


def test_agreement_table_flattens_the_summaries():
    sl = synthetic_slates(Q=8)
    summary = agreement_summary(sl.teacher.numpy(), sl.student.numpy(), sl.relevance.numpy(), sl.hard.numpy(),
                                sl.easy.numpy())
    table = agreement_table({"i2t": summary})
    assert len(table) == 2 * 3 and list(table.columns) == ["mean", "std", "n", "p_zero"]
    assert table.loc[("i2t", "easy", "teacher_relevance"), "mean"] == summary["easy"]["teacher_relevance"]["mean"]


def test_demo_checkpoints_finds_finished_runs_only(tmp_path):
    for name, finished in (("itc", True), ("kl", False)):
        run = tmp_path / "runs" / "headline" / f"{name}_seed0"
        (run / "checkpoint").mkdir(parents=True)
        (run / "checkpoint" / "config.json").write_text("{}")
        if finished:
            (run / "metrics.json").write_text("{}")
    assert demo_checkpoints(tmp_path) == {"itc": tmp_path / "runs" / "headline" / "itc_seed0" / "checkpoint"}
    assert demo_checkpoints(tmp_path, seed=1) == {} and demo_checkpoints(None) == {}
    assert demo_checkpoints(tmp_path / "missing") == {}


def test_ensure_students_trains_once_then_reuses(ws, tmp_path):
    cfg = profile("smoke", steps=2, batch=8, eval_every=2)
    lines = []
    paths = ensure_students(ws, {"itc": cfg}, tmp_path, log=lines.append)
    weights = paths["itc"] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = ensure_students(ws, {"itc": cfg}, tmp_path, log=lines.append)
    assert again == paths and weights.stat().st_mtime_ns == stamp
    assert lines[0].startswith("itc: training itc for 2 steps") and lines[1].startswith("itc: reusing")
    ensure_students(ws, {"itc": cfg.with_(steps=3)}, tmp_path, log=lines.append)  # another config: retrained
    assert "training" in lines[2] and load_checkpoint(paths["itc"], kind="student")[0]["step"] == 3


def test_real_sources_from_the_environment(tmp_path):
    none = real_sources({})
    assert not none.ready and len(none.problems) == 4 and none.dataset == "flickr30k"
    assert "WORKBENCH_TEACHER is not set" in none.explain() and "docs/real_data.md" in none.explain()
    json_path = tmp_path / "dataset_coco.json"
    json_path.write_text("{}")
    env = {"WORKBENCH_KARPATHY_JSON": str(json_path), "WORKBENCH_IMAGE_ROOT": str(tmp_path),
           "WORKBENCH_TEACHER": "Salesforce/blip-itm-base-coco", "WORKBENCH_STUDENT": " openai/clip "}
    ok = real_sources(env)
    assert ok.ready and ok.dataset == "coco" and ok.student == "openai/clip" and ok.karpathy_json == json_path
    assert ok.explain().startswith("real data: coco") and not ok.tiny
    bad = real_sources(env | {"WORKBENCH_IMAGE_ROOT": str(tmp_path / "nope"), "WORKBENCH_DATASET": "laion"})
    assert bad.problems == (f"WORKBENCH_IMAGE_ROOT={tmp_path / 'nope'} does not exist",
                            "WORKBENCH_DATASET must be one of ['flickr30k', 'coco'], got 'laion'")


class TableStudent(torch.nn.Module):
    """A dual encoder reading fixed unit embeddings from tables (stands in for HFStudent)."""

    embed_batch = 7

    def __init__(self, n_images: int, n_captions: int, dim: int = 6, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.img = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=-1)
        self.txt = torch.nn.functional.normalize(torch.randn(n_captions, dim, generator=g), dim=-1)
        self.scale = torch.nn.Parameter(torch.tensor(5.0))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.scale

    def encode_images(self, split, idx, device=None) -> torch.Tensor:
        return self.img[idx]

    def encode_texts(self, split, idx, device=None) -> torch.Tensor:
        return self.txt[idx]


def test_real_score_groups_against_a_loop(tmp_path):
    from hf_fixtures import write_tiny_karpathy

    from workbench.data.karpathy import load_karpathy

    json_path = write_tiny_karpathy(tmp_path, n_images=20)
    split = load_karpathy(json_path, tmp_path / "images", "test")  # 4 images, 20 captions
    student = TableStudent(split.num_images, split.num_captions)
    calls = []

    def scorer(img, cap):  # an oracle: the logit encodes the pair
        calls.append(len(img))
        return (img * 100 + cap).float() / 50

    groups = real_score_groups(student, scorer, split, k_hard=3, k_easy=2, easy_rank=6, queries=3, seed=0)
    s = 5.0 * student.img @ student.txt.T  # [4, 20]
    own = split.caption_image[None, :] == torch.arange(4)[:, None]
    pos = torch.nonzero(split.caption_image < 3).flatten()
    np.testing.assert_allclose(groups["student logit"]["positive"], s[split.caption_image[pos], pos], rtol=1e-5)
    np.testing.assert_allclose(groups["teacher logit"]["positive"], (split.caption_image[pos] * 100 + pos) / 50)
    np.testing.assert_allclose(groups["teacher probability"]["hard"],
                               1 / (1 + np.exp(-groups["teacher logit"]["hard"])), rtol=1e-6)
    hard = s.masked_fill(own, -np.inf)[:3].topk(3, dim=1).values.flatten()
    np.testing.assert_allclose(np.sort(groups["student logit"]["hard"]), np.sort(hard.numpy()), rtol=1e-5)
    rank = (-s.masked_fill(own, -np.inf)).argsort(1).argsort(1) + 1  # 1 = hardest non-positive
    easy_codes = np.round(groups["teacher logit"]["easy"] * 50).astype(int)
    img, cap = easy_codes // 100, easy_codes % 100
    assert len(img) == 3 * 2 and (rank[img, cap] > 6).all() and not own[img, cap].any()
    assert calls == [15, 9, 6]


def test_thumbnails_are_squares_in_0_1(tmp_path):
    from hf_fixtures import write_tiny_karpathy

    from workbench.data.karpathy import load_karpathy

    split = load_karpathy(write_tiny_karpathy(tmp_path, n_images=20), tmp_path / "images", "test")
    pics = thumbnails(split, [2, 0], size=16)
    assert pics.shape == (2, 3, 16, 16) and float(pics.min()) >= 0 and float(pics.max()) <= 1
    assert not torch.equal(pics[0], pics[1])


def test_score_explorer_redraws_and_shows_only_the_controls_that_apply():
    slates = {"i2t": synthetic_slates(Q=12), "t2i": synthetic_slates(Q=9, seed=1, direction="t2i")}
    students = {d: {"itc": sl.student, "kl": sl.student * 0.1} for d, sl in slates.items()}
    ex_widget = ScoreExplorer(slates, students)
    c = ex_widget.controls
    assert all(w.continuous_update is False for w in c.values() if hasattr(w, "continuous_update"))
    assert c["temperature"].layout.display == "none" and "teacher probability" in ex_widget.stats.value
    png, stats = ex_widget.view.image.value, ex_widget.stats.value
    c["model"].value = "kl"
    assert ex_widget.view.image.value != png and c["view"].layout.display == "none"
    assert "student kl logit" in ex_widget.stats.value
    expected = describe((slates["i2t"].student * 0.1)[slates["i2t"].hard].numpy())["skewness"]
    assert f"{expected:.3g}" in ex_widget.stats.value
    c["direction"].value = "t2i"
    assert "t2i" in ex_widget.stats.value
    c["model"].value, c["view"].value = TEACHER, "tempered"
    assert c["temperature"].layout.display == "" and c["view"].layout.display == ""
    c["positive"].value = c["hard"].value = c["easy"].value = False
    assert "tick at least one group" in ex_widget.view.error.value
    with pytest.raises(ValueError, match="same models in every direction"):
        ScoreExplorer(slates, {"i2t": {"itc": slates["i2t"].student}, "t2i": {}})
    assert stats != ex_widget.stats.value


def test_query_viewer_follows_its_controls(ws):
    torch.manual_seed(2)
    student = ws.new_student()
    kwargs = {"k_hard": 5, "k_easy": 4, "easy_rank": 10, "seed": 0}
    slates = {"i2t": build_eval_slates(student, ws.teacher, ws.world.test, "i2t", queries=12, **kwargs),
              "t2i": build_eval_slates(student, ws.teacher, ws.world.test, "t2i", queries=6, **kwargs)}
    viewer = QueryViewer(slates, ws.world.test)
    c = viewer.controls
    assert c["query"].continuous_update is False and c["query"].max == 11
    png, head = viewer.view.image.value, viewer.header.value
    c["query"].value = 9
    assert viewer.view.image.value != png and viewer.header.value != head and "query 9" in viewer.header.value
    assert viewer.frame.equals(query_frame(slates["i2t"], ws.world.test, 9, "hard", "teacher"))
    taus = viewer.taus("i2t", 9, "hard")
    expected = agreement_taus(*(x[9:10].numpy() for x in (slates["i2t"].teacher, slates["i2t"].student,
                                                           slates["i2t"].relevance, slates["i2t"].hard,
                                                           slates["i2t"].easy)))["hard"]
    assert all(math.isclose(taus[k], float(v[0])) or (math.isnan(taus[k]) and np.isnan(v[0]))
               for k, v in expected.items())
    c["window"].value = "easy"
    assert set(viewer.frame.role) <= {"positive", "easy"} and "easy negatives" in viewer.header.value
    c["direction"].value = "t2i"  # 6 queries: the slider follows and clamps
    assert c["query"].max == 5 and c["query"].value == 5 and viewer.view.error.value == ""
    assert f"caption {int(slates['t2i'].queries[5])}" in viewer.header.value
    assert viewer.frame.text[0] == ws.world.test.scenes[viewer.frame.candidate[0]].describe()
    assert "class='wb-query'" in viewer.table.value and "<table" in viewer.table.value


def test_loss_playground_drives_any_registered_loss_with_sliders_from_the_registry():
    @register_loss("scaled_for_test", checks={"scale": pg_positive(), "share": pg_in_range(0.0, 1.0)})
    def scaled(batch: ScoreBatch, *, scale: float = 2.0, share: float = 0.5, steps: int = 3,
               mode: Literal["a", "b"] = "a") -> dict[str, torch.Tensor]:
        """A test loss: scale x share x the mean student score on the negatives."""
        return {"distill_loss": scale * share * batch.student[batch.negative].mean()}

    try:
        play = LossPlayground(random_cached(B=12), pg.Settings.of(k=4, validity="top", m=2))
        assert "scaled_for_test" in play.controls["loss"].options
        play.controls["loss"].value = "scaled_for_test"
        c = play.controls
        assert set(play.param_controls) == {"scale", "share", "steps", "mode"} and "validity" not in c
        assert type(c["scale"]).__name__ == "FloatLogSlider" and c["scale"].value == 2.0
        assert (c["share"].min, c["share"].max) == (0.0, 1.0) and type(c["steps"]).__name__ == "IntSlider"
        assert list(c["mode"].options) == ["a", "b"]
        value = play.value
        c["scale"].value = 4.0
        assert play.settings.params["scale"] == 4.0 and play.value != value
        widths = {w.layout.width for w in (c["k"], c["lam"], c["scale"], c["share"], c["steps"])}
        assert widths == {"360px"}, "every slider has the same width"
    finally:
        unregister_loss("scaled_for_test")


def test_loss_playground_says_why_nothing_is_selected():
    cached = random_cached(B=12)
    top = float(cached.teacher_logit.max()) + 1
    play = LossPlayground(cached, pg.Settings.of(k=4, validity="threshold", threshold=math.ceil(top)))
    assert "No valid negatives" in play.empty_html.value and "Lower θ" in play.empty_html.value
    assert "no pair of ordered negatives to compare" in play.loss_html.value and "–" not in play.loss_html.value
    assert "mean of i2t and t2i" in play.loss_html.value
    play.controls["validity"].value = "all"
    assert play.empty_html.value == ""
