"""The fair test's analyses and verdict rules (docs/protocol.md): hand-built findings, paired statistics, the plan's
intervention arms, convergence flags and the choice of the best method on validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.experiments import protocol as fair
from workbench.experiments.parallel import Job
from workbench.experiments.plan import PROFILES, variants
from workbench.findings.stats import paired_difference
from workbench.findings.verdicts import finding1_verdict, finding2_verdict, finding3_verdict, headline_verdict, side
from workbench.training.config import FitConfig


def diff(*values: float) -> dict:
    return paired_difference(list(values), [0.0] * len(values))


def test_side_of_a_paired_interval() -> None:
    assert side(diff(1.0, 2.0, 1.5)) == "above"
    assert side(diff(-1.0, -2.0, -1.5)) == "below"
    assert side(diff(-1.0, 2.0, 0.5)) == "includes 0"
    assert side(diff(3.0)) is None and side(None) is None  # one seed: no interval


def _f2(hard, easy, control) -> dict:
    return {"finding2": {"intervention": {"contrasts": {"hard: teacher - random": hard,
                                                        "easy: teacher - random": easy,
                                                        "hard: truth - random": control}}}}


def test_finding2_rule() -> None:
    up, flat, down = diff(5, 6, 7), diff(-1, 2, 0), diff(-5, -6, -7)
    assert finding2_verdict(_f2(up, flat, up))["verdict"] == "reproduced"
    assert finding2_verdict(_f2(up, down, up))["verdict"] == "reproduced"  # easy order hurts: still only hard helps
    assert finding2_verdict(_f2(up, up, up))["verdict"] == "not reproduced"  # the easy order helps too
    assert finding2_verdict(_f2(flat, flat, up))["verdict"] == "not reproduced"
    control_fails = finding2_verdict(_f2(up, flat, flat))
    assert control_fails["verdict"] == "untestable" and "positive control" in control_fails["reason"]
    assert finding2_verdict(_f2(up, None, up))["verdict"] == "untestable"  # (i) holds, (ii) not run
    assert finding2_verdict(_f2(flat, None, up))["verdict"] == "not reproduced"  # (i) fails: (ii) cannot rescue it
    assert finding2_verdict(_f2(None, flat, up))["verdict"] == "untestable"


def _f1(transfer_diff, skew=3.0, student_skew=0.1) -> dict:
    easy = {"teacher probability": {"easy": {"skewness": skew, "mass_extremes": 0.9}},
            "student logit": {"easy": {"skewness": student_skew, "excess_kurtosis": 0.2}}}
    return {"finding1": {"distributions": {"i2t": easy},
                         "transfer": {"ranking": "cprd", "logit": "kl", "difference": transfer_diff}}}


def test_finding1_rule() -> None:
    assert finding1_verdict(_f1(diff(4, 5, 6)))["verdict"] == "reproduced"
    assert finding1_verdict(_f1(diff(-1, 1, 0.5)))["verdict"] == "inconclusive"
    assert finding1_verdict(_f1(diff(-4, -5, -6)))["verdict"] == "not reproduced"
    assert finding1_verdict(_f1(diff(4, 5, 6), student_skew=2.0))["verdict"] == "not reproduced"  # (a) fails
    assert finding1_verdict(_f1(None))["verdict"] == "untestable"


def test_finding3_rule() -> None:
    lower, higher = diff(-0.01, -0.02, -0.015), diff(0.01, -0.002, 0.02)
    keys = ("held-out ITC change: cprd - listmle", "held-out ITC change: cprd - kl", "neg_up: cprd - listmle")
    f = {"finding3": {"shared_slates": {"contrasts": dict.fromkeys(keys, lower)}}}
    assert finding3_verdict(f)["verdict"] == "reproduced"
    f["finding3"]["shared_slates"]["contrasts"][keys[1]] = higher
    assert finding3_verdict(f)["verdict"] == "not reproduced"
    del f["finding3"]["shared_slates"]["contrasts"][keys[2]]
    assert finding3_verdict(f)["verdict"] == "untestable"


def test_headline_rule_room_share_and_goal() -> None:
    rsum = {"itc": {"rsum": {"mean": 450.0}}, "teacher_rerank": {"rsum": {"mean": 600.0}}}
    f = {"retrieval": rsum, "paired": {"semantic": {"cprd": diff(40, 45, 50)}},
         "paired_cprd": {"semantic": {"kl": diff(5, 6, 7)}}, "room": {"rsum": 100.0}}
    h = headline_verdict(f)
    assert h["beats_itc"] and h["beats_baselines"] == {"kl": True}
    assert h["room_share"] == pytest.approx(0.45) and h["gap_closed"] == pytest.approx(0.3) and h["goal_met"]
    f["paired_cprd"]["semantic"]["kl"] = diff(-1, 2, 0)
    assert not headline_verdict(f)["goal_met"]  # does not beat a baseline that ran
    f["room"] = {"rsum": -5.0}
    assert headline_verdict(f)["room_share"] is None  # no room: no share of it
    assert headline_verdict({"retrieval": rsum, "paired": {"semantic": {}}}) == {"available": False}


def test_the_plan_names_every_intervention_arm_once() -> None:
    arms = {fair.arm_name(v): v.name for v in variants(PROFILES["cpu"]) if fair.arm_name(v)}
    assert arms == {"hard/teacher": "listmle", "hard/random": "listmle_hard_random", "hard/truth": "listmle_hard_truth",
                    "easy/teacher": "listmle_easy", "easy/random": "listmle_easy_random",
                    "easy/truth": "listmle_easy_truth"}
    assert all(fair.arm_name(v) is None for v in variants(PROFILES["cpu"]) if v.name in ("cprd", "kl", "itc"))


def test_paired_against_and_transfer_choose_on_validation() -> None:
    rsums = {"itc": {0: 400.0, 1: 410.0, 2: 405.0}, "kl": {0: 395.0, 1: 404.0, 2: 401.0},
             "cprd": {0: 420.0, 1: 425.0, 2: 430.0}, "listmle": {0: 440.0, 1: 441.0}, "one": {0: 1.0}}
    paired = fair.paired_against(rsums, "itc")
    assert set(paired) == {"kl", "cprd", "listmle"}  # "one" shares a single seed with ITC
    assert paired["cprd"]["values"] == [20.0, 15.0, 25.0] and paired["listmle"]["seeds"] == [0, 1]
    conv = {name: {"final_val_rsum": {"mean": m}} for name, m in (("kl", 1.0), ("cprd", 3.0), ("listmle", 2.0))}
    t = fair.transfer(rsums, conv)  # listmle is best on test, cprd on validation: validation decides
    assert (t["ranking"], t["logit"]) == ("cprd", "kl") and t["difference"]["values"] == [25.0, 21.0, 29.0]


def test_convergence_flags_a_curve_still_rising(tmp_path: Path) -> None:
    def job(name: str, seed: int, curve: list[float]) -> Job:
        out = tmp_path / f"{name}{seed}"
        out.mkdir()
        rows = [{"step": 100 * (i + 1), "loss": 1.0} | {"val_semantic_rsum": v} for i, v in enumerate(curve)]
        (out / "history.json").write_text(json.dumps(rows + [{"step": 999, "loss": 1.0}]))
        return Job(out, FitConfig(), variant=name, seed=seed)

    flat, rising = [300.0, 400.0, 450.0, 451.0, 450.5, 451.0], [300.0, 350.0, 400.0, 420.0, 440.0, 460.0]
    conv = fair.convergence([job("a", 0, flat), job("a", 1, rising), job("b", 0, flat)])
    assert conv["a"]["still_rising_seeds"] == [1] and conv["b"]["still_rising_seeds"] == []
    assert conv["a"]["final_val_rsum"]["values"] == [451.0, 460.0]


def test_the_cpu_profile_schedules_its_first_variants_first(tmp_path: Path) -> None:
    from workbench.experiments.plan import jobs

    p = PROFILES["cpu"]
    todo = p.schedule(jobs(p, tmp_path, [v for v in variants(p) if v.group in p.groups]))
    order = list(dict.fromkeys(j.variant for j in todo))
    assert order[:len(p.first)] == list(p.first)
    assert [j.seed for j in todo if j.variant == "cprd"] == [0, 1, 2]
    assert len(todo) == len(jobs(p, tmp_path, [v for v in variants(p) if v.group in p.groups]))


def test_reference_minus_is_the_reference_minus_each_other_run() -> None:
    rsums = {"cprd": {0: 420.0, 1: 425.0, 2: 430.0}, "kl": {0: 395.0, 1: 404.0, 2: 401.0}, "one": {1: 3.0}}
    out = fair.reference_minus(rsums, "cprd")
    assert set(out) == {"kl"} and out["kl"]["values"] == [25.0, 21.0, 29.0]  # CPRD above KL: positive
