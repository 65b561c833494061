"""Equal tuning on validation (docs/protocol.md § 3): which views a loss can see, the grid, the choice, and the
tuned plan; end to end through ``reproduce`` at tiny size."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from test_losses_support import make_batch, random_slates

from workbench.experiments.plan import METHODS, PROFILES, variants
from workbench.experiments.tuning import (
    SCALE_FREE,
    apply_choice,
    choose,
    grid_results,
    grid_variants,
    views_of,
    with_point,
)
from workbench.losses import get_loss

PARAMS = {m: METHODS[m][0][1].params for m in METHODS if m != "itc"}


def _total(name: str, slates: dict, scale: float) -> float:
    s = dict(slates, teacher=torch.logit(slates["teacher"]) * scale)
    return float(sum(get_loss(name, **PARAMS.get(name, {}))(make_batch(s, grad=False)).values()))


@pytest.mark.parametrize("name", SCALE_FREE)
def test_a_scale_free_loss_is_unchanged_by_the_teachers_logits_divided_by_4(name):
    slates = random_slates(3, B=8, L=10)
    assert _total(name, slates, 0.25) == pytest.approx(_total(name, slates, 1.0), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", ["kl", "listnet"])
def test_a_scale_reading_loss_changes_with_the_view(name):  # the control: the check above can fail
    slates = random_slates(3, B=8, L=10)
    assert abs(_total(name, slates, 0.25) - _total(name, slates, 1.0)) > 1e-3


def test_views_each_loss_is_tuned_over():
    both = ("logits", "logits/4")
    assert views_of("kl", {}, both) == both and views_of("listnet", {}, both) == both
    assert views_of("cprd", {"validity": "top", "m": 4}, both) == ("logits",)
    assert views_of("cprd", {"validity": "threshold", "threshold": 0.0}, both) == both  # reads the values
    assert views_of("mse", {"standardize": True}, both) == ("logits",)
    assert views_of("mse", {}, both) == both
    assert views_of("infonce", {}, both) == ("logits",)  # no teacher: λ only


def _profile():
    return replace(PROFILES["smoke"], tune_lambdas=(0.5, 2.0), methods=("itc", "kl", "cprd"))


def test_the_grid_is_the_same_for_every_method_on_the_tuning_seed(tmp_path):
    from workbench.experiments.plan import jobs

    p = _profile()
    table = [v for v in variants(p) if v.group in ("headline", "baselines", "intervention")]
    grid = grid_variants(p, table)
    by_method = {}
    for v in grid:
        by_method.setdefault(v.name.split("__")[0], []).append(v)
    assert {m: len(vs) for m, vs in by_method.items()} == {"kl": 4, "cprd": 2, "mined_itc": 2}  # no itc, negclip
    kl_tempered = next(v for v in grid if v.name == "kl__l2_logits_4")
    cfg = kl_tempered.config(p, 100)
    assert cfg.losses[1].weight == 2.0 and cfg.teacher_output == "tempered" and cfg.teacher_temperature == 4.0
    assert {j.seed for j in jobs(p, tmp_path, grid)} == {p.tune_seed} and p.tune_seed not in range(p.seeds)
    assert all(v.group == "tuning" and not v.rerank for v in grid)


def test_choose_prefers_the_highest_validation_rsum_then_the_smaller_lambda_then_logits():
    pts = [{"lambda": 2.0, "view": "logits", "val_rsum": 300.0}, {"lambda": 0.5, "view": "logits/4", "val_rsum": 300.0},
           {"lambda": 0.5, "view": "logits", "val_rsum": 300.0}, {"lambda": 1.0, "view": "logits", "val_rsum": None},
           {"lambda": 0.25, "view": "logits", "val_rsum": math.nan}]
    assert choose(pts) == pts[2]
    assert choose(pts[:1] + [{"lambda": 4.0, "view": "logits/4", "val_rsum": 301.0}])["lambda"] == 4.0
    with pytest.raises(ValueError, match="finite validation RSUM"):
        choose(pts[3:])


def test_the_chosen_points_reach_the_final_runs_and_finding2s_arms():
    p = replace(_profile(), methods=("itc", "listmle", "cprd"))
    table = [v for v in variants(p) if v.group in ("headline", "intervention", "validity")]
    tuning = {"cprd": {"chosen": {"lambda": 0.5, "view": "logits"}},
              "listmle": {"chosen": {"lambda": 2.0, "view": "logits"}}}
    tuned = {v.name: v for v in apply_choice(table, tuning)}
    assert tuned["cprd"].distill.weight == 0.5 and tuned["listmle"].distill.weight == 2.0
    assert all(v.distill.weight == 2.0 for v in tuned.values() if v.group == "intervention")
    assert tuned["listmle_easy_random"].controlled == dict(next(v for v in table if v.name == "listmle_easy_random"
                                                                ).controlled)  # the arm's order is kept
    assert all(v.distill.weight == 1.0 for v in tuned.values() if v.group == "validity")  # ablations untouched
    assert tuned["itc"] == next(v for v in table if v.name == "itc")
    assert with_point(tuned["cprd"], 1.0, "logits/4").changes["teacher_output"] == "tempered"


def test_grid_results_read_the_final_validation_rsum(tmp_path):
    from workbench.experiments.plan import jobs

    p = _profile()
    table = [v for v in variants(p) if v.name in ("itc", "cprd")]
    todo = jobs(p, tmp_path, grid_variants(p, table))
    for job, last in zip(todo, (410.0, 412.5), strict=True):
        job.out_dir.mkdir(parents=True)
        (job.out_dir / "history.json").write_text(json.dumps([{"step": 10, "val_semantic_rsum": 1.0},
                                                             {"step": 30, "val_semantic_rsum": last}]))
    got = grid_results(p, table, todo)
    assert [q["val_rsum"] for q in got["cprd"]["grid"]] == [410.0, 412.5]
    assert got["cprd"]["chosen"]["lambda"] == 2.0 and got["cprd"]["seed"] == 100
    assert grid_results(p, table, []) == {}  # nothing finished: nothing chosen


@pytest.mark.slow
def test_reproduce_tunes_on_validation_then_runs_the_chosen_points(tmp_path, monkeypatch):
    from workbench.experiments.reproduce import reproduce

    monkeypatch.setitem(PROFILES, "tiny_tuned", replace(_profile(), name="tiny_tuned", methods=("itc", "kl")))
    out = tmp_path / "rep"
    findings = reproduce("tiny_tuned", out, groups=("headline",), workers=2, log=lambda *_: None)
    tuning = findings["tuning"]
    assert set(tuning) == {"kl"} and len(tuning["kl"]["grid"]) == 4  # 2 λ x 2 views
    for method, t in tuning.items():
        assert all(q["val_rsum"] is not None for q in t["grid"])
        config = json.loads((out / "runs" / "headline" / f"{method}_seed0" / "config.json").read_text())
        assert config["fit"]["losses"][1]["weight"] == t["chosen"]["lambda"]
        assert config["fit"]["teacher_output"] == ("tempered" if t["chosen"]["view"] == "logits/4" else "logit")
    report = (out / "report.md").read_text()
    assert "## Tuning (validation split)" in report and "one tuning seed (100" in report
    assert "![tuning](figures/tuning_grid.png)" in report and (out / "figures" / "tuning_grid.png").is_file()
    assert (out / "runs" / "tuning" / "kl__l0.5_logits_seed100" / "metrics.json").is_file()


def test_research_grid_script_plans_what_reproduce_would(tmp_path):
    """research/fair/tuning_grid.py trains reproduce's own grid runs (same names and configs) for the methods it
    is given, plus ITC on the tuning seed; an unknown method is refused by name."""
    import sys
    from pathlib import Path

    from workbench.experiments.plan import jobs

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from research.fair.tuning_grid import plan_grid

    p, table, grid, reference = plan_grid("cpu", ["kl", "listmle"], (0.25, 1.0), tmp_path)
    expected = jobs(p, tmp_path / "runs", [v for v in grid_variants(p, variants(p)) if v.name.split("__")[0]
                                           in ("kl", "listmle")])
    assert [(j.out_dir, j.cfg) for j in grid] == [(j.out_dir, j.cfg) for j in expected]
    assert len(grid) == 2 * 2 + 2  # KL: 2 λ × 2 views; ListMLE (scale-free): 2 λ
    assert [j.seed for j in reference + grid] == [p.tune_seed] * 7
    assert [t.name for t in reference[0].cfg.losses] == ["itc"]
    with pytest.raises(ValueError, match="--methods.*'itc'"):
        plan_grid("cpu", ["itc"], (1.0,), tmp_path)


def test_research_grid_reading_follows_the_preregistered_margin():
    """The fourth amendment's reading: ListMLE's chosen point − KL's, > 6.5 robust, < −6.5 reversed, else not
    robust; a choice at the grid's smallest λ is flagged."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from research.fair.tuning_grid import reading

    def grid(*points):
        pts = [{"lambda": lam, "view": "logits", "val_rsum": v} for lam, v in points]
        return {"grid": pts, "chosen": choose(pts), "seed": 100}

    kl = grid((0.25, 430.0), (1.0, 400.0))
    assert reading({"listmle": grid((0.25, 436.0), (1.0, 437.0)), "kl": kl})["verdict"] == "robust to the grid"
    near = reading({"listmle": grid((0.25, 436.0), (1.0, 436.5)), "kl": kl})
    assert near["verdict"] == "not robust" and near["difference"] == pytest.approx(6.5)
    assert near["at_edge"] == ["kl"]
    assert reading({"listmle": grid((1.0, 420.0),), "kl": kl})["verdict"] == "reversed"
    assert reading({"kl": kl})["verdict"] == "untestable"


def test_the_tuned_cprd_is_read_by_the_headline_rule_against_the_references_baselines():
    """research/fair/tuning_grid.py --confirm cprd: the headline rule with the tuned CPRD's paired differences in
    place of the reference's, against the baselines the reference's own headline used (not every method that ran),
    with the reference's room."""
    import sys
    from pathlib import Path

    from workbench.findings.stats import paired_difference

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from research.fair.tuning_grid import tuned_headline

    def diff(*values):
        return paired_difference(list(values), [0.0] * len(values))

    findings = {"paired_cprd": {"semantic": {"negclip": {}, "listmle": {}}}, "room": {"rsum": 100.0},
                "retrieval": {"itc": {"rsum": {"mean": 440.0}}, "teacher_rerank": {"rsum": {"mean": 590.0}}}}
    minus = {"itc": diff(9.0, 10.0, 11.0), "negclip": diff(4.0, 5.0, 6.0), "listmle": diff(-3.0, 1.0, 5.0),
             "kl": diff(-50.0, -40.0, -45.0)}
    h = tuned_headline(findings, minus)
    assert h["beats_itc"] and h["beats_baselines"] == {"negclip": True, "listmle": False}
    assert h["room_share"] == pytest.approx(0.10) and h["gap_closed"] == pytest.approx(10.0 / 150.0)
    assert not h["goal_met"]
    minus["listmle"] = diff(4.0, 5.0, 6.0)
    assert not tuned_headline(findings, minus)["goal_met"]  # every baseline beaten, but 10 % of the room < 30 %
    findings["room"] = {"rsum": 20.0}
    assert tuned_headline(findings, minus)["goal_met"]
