"""The loss playground's logic (hand cases, naive-loop oracles for values and gradients), the widgets built
headless (build, set a value, assert the output changed), the train panel's stop button, and ``StopTraining``."""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch

from workbench.analysis import playground as pg
from workbench.analysis.runs import DEFAULT_TEACHER, open_workspace
from workbench.analysis.widgets import FigureView, LossPlayground, TrainPanel, loss_param_controls, new_figure
from workbench.data.world import WorldConfig
from workbench.io import load_checkpoint, read_json
from workbench.losses import ScoreBatch, get_loss, register_loss, unregister_loss
from workbench.training.config import LossTerm, profile
from workbench.training.loop import StopTraining, fit

W, F = True, False


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: on a busy 2-core machine a second intra-op thread only stalls (10-40x slower runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
        pg.Settings(**change)


# ------------------------------------------------------------------------------------- objective: oracles


def naive_cprd(s: torch.Tensor, u: torch.Tensor, ordered: torch.Tensor, negative: torch.Tensor, T: float):
    """Per-row loop: the DESIGN.md §2 formula written out, invalid negatives only in denominators."""
    total = s.new_zeros(())
    for i in range(s.shape[0]):
        valid = sorted((j for j in range(s.shape[1]) if ordered[i, j]), key=lambda j, i=i: (-float(u[i, j]), j))
        below = [j for j in range(s.shape[1]) if negative[i, j] and not ordered[i, j]]
        for n, j in enumerate(valid):
            rest = valid[n:] + below
            total = total - s[i, j] / T + torch.logsumexp(torch.stack([s[i, r] / T for r in rest]), 0)
    return total / s.shape[0]


def naive_itc(s: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    rows = [torch.logsumexp(s[i], 0) - torch.logsumexp(s[i][positive[i]], 0) for i in range(s.shape[0])]
    return torch.stack(rows).mean()


@pytest.mark.parametrize("settings", [
    pg.Settings(k=4, validity="threshold", threshold=0.0, temperature=0.7, lam=0.5),
    pg.Settings(k=6, validity="top", m=2, lam=2.0, teacher_output="probability"),
    pg.Settings(k=3, validity="all"),
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
        cprd = naive_cprd(slate_s, slate_u, ordered, res.batch.negative, settings.temperature)
        assert math.isclose(res.itc, itc.item(), rel_tol=1e-9) and math.isclose(res.distill, cprd.item(), rel_tol=1e-9)
        g_itc, g_cprd = (torch.autograd.grad(v, s, retain_graph=True)[0].gather(1, cols) for v in (itc, cprd))
        torch.testing.assert_close(res.grad_itc, torch.where(res.batch.mask, g_itc, 0.0))
        torch.testing.assert_close(res.grad_distill, torch.where(res.batch.mask, g_cprd, 0.0))
        torch.testing.assert_close(res.grad, res.grad_itc + settings.lam * res.grad_distill)
    assert math.isclose(obj.total, obj.itc + settings.lam * obj.distill)
    assert math.isclose(obj.itc, sum(r.itc for r in obj.directions.values()) / 2)


def test_validity_all_equals_listmle_and_invalid_negatives_are_only_pushed_down():
    cached = random_cached(seed=3)
    s = pg.Settings(k=7, validity="all")
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
        res = pg.objective(random_cached(), pg.Settings(k=3), get_loss("constant_for_test")).directions["i2t"]
        assert res.distill == 1.5 and not res.grad_distill.any()
    finally:
        unregister_loss("constant_for_test")


def test_implied_order_lists_valid_negatives_in_teacher_order_then_the_invalid_ones():
    cached = random_cached(seed=5)
    settings = pg.Settings(k=6, validity="threshold", threshold=0.0)
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
    assert math.isclose(pg.order_agreement(res, pg.Settings(validity="all")), 1 / 3)
    assert math.isnan(pg.order_agreement(res, pg.Settings(validity="top", m=1)))  # one valid: no pair


def test_compare_losses_rows_follow_their_losses():
    cached = random_cached()
    s = pg.Settings(k=5, validity="all")
    table = pg.compare_losses(cached, {"cprd": s.loss(), "listmle": get_loss("listmle"), "kl": get_loss("kl")}, s)
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
    # same seed, same run: the student's initialisation is seeded too (train_student_run)
    assert table.loc["itc"].tolist() == table.loc["itc again"].tolist()


# ------------------------------------------------------------------------------------------------ widgets


def test_loss_playground_redraws_when_a_slider_moves():
    cached = random_cached(B=12)
    play = LossPlayground(cached, pg.Settings(k=4, validity="top", m=2))
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
    play = LossPlayground(cached, pg.Settings(k=6, validity="threshold", threshold=0.3))
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
    play = LossPlayground(cached, pg.Settings(k=30))
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
