"""The batched trainer: a member equals the same run trained alone (within float tolerance), writes the same run
folder, resumes alone from its checkpoint, stops alone when it diverges; members that cannot share a batch are
refused by name.

Tolerance (measured on this CPU, smoke world, 20 steps): logged losses agree to a relative 1e-4 (seen: <= 2e-7 with
the relation-blind-v1 student on ambiguous-v1, <= 6e-6 with moments-v1 on contrast-chain-v1); the gradient-coordination
probe's entries (cosines, gradient norms, the log-scale gradient: sums with cancellation, which amplify rounding) to
5e-3 relative or 1e-3 absolute (seen: <= 8e-3 relative on a log-scale gradient of 0.024, 2e-4 absolute); final
weights to 1e-3 absolute (seen: <= 3e-4), validation and test R@K to one query (0.5 percentage points on the smoke
world's 200 test images; seen: equal). The difference is float32 rounding: vmap's batched matmuls sum in
another order than a single model's.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from workbench.experiments import WORLD_PRESETS, RunSpec, open_workspace, train_run, train_runs_batched
from workbench.training.batched import Member, check_members, fit_batched
from workbench.training.checkpoint import load_student
from workbench.training.config import LossTerm, profile
from workbench.training.loop import StopTraining, fit

REL = 1e-4
PROBE_REL, PROBE_ABS = 5e-3, 1e-3
RECALL = 0.5 + 1e-9


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return open_workspace(WORLD_PRESETS["smoke"], store_path=tmp_path_factory.mktemp("store") / "s.sqlite")


def _configs():
    base = profile("smoke", steps=20, eval_every=10, positives="coco", pool="gallery", refresh_every=7)
    cprd = LossTerm("cprd", 1.0, {"validity": "top", "m": 2})
    return {
        "itc": replace(base, losses=(LossTerm("itc"),)),
        "cprd": replace(base, seed=1, losses=(LossTerm("itc"), cprd)),
        "kl_queue": replace(base, seed=2, k=6, pool="queue", queue_size=64, teacher_output="probability",
                            losses=(LossTerm("itc"), LossTerm("kl", 0.5))),
        "listmle_easy": replace(base, negatives="easy", easy_rank=8, losses=(LossTerm("itc"), LossTerm("listmle"))),
        "negclip": replace(base, seed=3, pool="batch", near_misses=True, losses=(LossTerm("itc"),)),
        "cprd_controlled": replace(base, seed=1, k=4, pool="batch", losses=(LossTerm("itc"), cprd)),
        "cprd_clean": replace(base, seed=4, drop_teacher_matches=True, match_threshold=0.3,
                              losses=(LossTerm("itc"), cprd)),
    }


def _close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


def _assert_same_history(alone: list[dict], batched: list[dict]) -> None:
    assert [r["step"] for r in alone] == [r["step"] for r in batched]
    for a, b in zip(alone, batched, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if key.startswith("val_"):
                assert abs(value - b[key]) <= RECALL, (key, value, b[key])
            elif key.startswith(("cos_", "grad")):  # the probe: cos_<term>, gradnorm_<term>, grad_log_scale_<term>
                assert math.isclose(value, b[key], rel_tol=PROBE_REL, abs_tol=PROBE_ABS), (key, value, b[key])
            elif isinstance(value, float):
                assert _close(value, b[key]), (key, value, b[key])


def test_a_batched_member_is_the_same_run_trained_alone(ws, tmp_path):
    configs = _configs()
    controlled = {"cprd_controlled": {"noise": 1.0}}
    specs = [RunSpec(cfg, tmp_path / "batched" / name, rerank=name == "itc", controlled=controlled.get(name),
                     probe_every=10 if name == "cprd" else 0) for name, cfg in configs.items()]
    batched = train_runs_batched(ws, specs)
    for spec, got in zip(specs, batched, strict=True):
        name = spec.out_dir.name
        alone = train_run(ws, spec.cfg, tmp_path / "alone" / name, rerank=spec.rerank, controlled=spec.controlled,
                          probe_every=spec.probe_every)
        folders = {k: tmp_path / k / name for k in ("alone", "batched")}
        files = {k: sorted(p.name for p in f.iterdir()) for k, f in folders.items()}
        assert files["alone"] == files["batched"] == ["checkpoint", "config.json", "history.json", "metrics.json"]
        configs_json = [json.loads((f / "config.json").read_text()) for f in folders.values()]
        assert configs_json[0] == configs_json[1]
        histories = [json.loads((f / "history.json").read_text()) for f in folders.values()]
        _assert_same_history(*histories)
        if name == "cprd":
            assert "cos_cprd" in histories[1][-1]  # the probe ran on the member's own weights
        for protocol, m in alone["retrieval"].items():
            for key, value in m.items():
                assert abs(value - got["retrieval"][protocol][key]) <= RECALL * (6 if key == "rsum" else 1)
        assert ("rerank" in got) == spec.rerank
        assert got["batched"]["members"] == len(specs) and "diverged" not in got
        a, b = (load_student(f / "checkpoint").state_dict() for f in folders.values())
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3


def test_a_member_checkpoint_resumes_alone(ws, tmp_path):
    """Stopped at step 10 (StopTraining from a callback), a member's checkpoint holds its own optimiser, schedule,
    generator and pools: fit(resume=True) continues it alone to the end, as the uninterrupted single run."""
    cfg = replace(_configs()["cprd"], checkpoint_every=0)
    scores = ws.teacher_scores()

    def stop_at_10(step, rows):
        if step == 10:
            raise StopTraining

    torch.manual_seed(cfg.seed)
    student = ws.new_student()
    torch.manual_seed(0)
    other = ws.new_student()
    fit_batched([Member(cfg, student, scores, out_dir=tmp_path / "b"),
                 Member(replace(cfg, seed=0, losses=(LossTerm("itc"),)), other)], ws.world,
                step_callbacks=(stop_at_10,))
    torch.manual_seed(123)
    resumed = fit(cfg, ws.world, ws.new_student(), teacher_scores=scores, out_dir=tmp_path / "b", resume=True)
    torch.manual_seed(cfg.seed)
    alone = fit(cfg, ws.world, ws.new_student(), teacher_scores=scores)
    _assert_same_history(alone.history, resumed.history)


def test_a_diverging_member_stops_alone(ws, tmp_path):
    from workbench.losses import ScoreBatch, register_loss, unregister_loss

    calls = {"n": 0}

    @register_loss("blows_up", needs_teacher=False)
    def blows_up(batch: ScoreBatch) -> dict[str, torch.Tensor]:
        """Zero for 8 calls (4 steps, two directions), then NaN: a stand-in for a diverging run."""
        calls["n"] += 1
        s = torch.where(batch.mask, batch.student, 0.0).sum()
        return {"distill_loss": s * (0.0 if calls["n"] <= 8 else float("nan"))}

    try:
        base = _configs()["itc"]
        cfgs = [base, replace(base, losses=(LossTerm("itc"), LossTerm("blows_up"))), replace(base, seed=1)]
        lines: list[str] = []
        out = train_runs_batched(ws, [RunSpec(c, tmp_path / f"m{i}") for i, c in enumerate(cfgs)], log=lines.append)
    finally:
        unregister_loss("blows_up")
    assert "diverged" not in out[0] and "diverged" not in out[2]
    assert out[1]["diverged"]["step"] == 5 and "not finite" in out[1]["diverged"]["reason"]
    assert len(lines) == 1 and "diverged at step 5" in lines[0]
    assert all(math.isfinite(v) for v in out[1]["retrieval"]["semantic"].values())  # its last finite weights
    history = json.loads((tmp_path / "m1" / "history.json").read_text())
    assert history == [] or history[-1]["step"] < 5
    alone = train_run(ws, base, tmp_path / "alone", rerank=False)  # the others did not notice
    _assert_same_history(json.loads((tmp_path / "alone" / "history.json").read_text()),
                         json.loads((tmp_path / "m0" / "history.json").read_text()))
    assert abs(alone["rsum"] - out[0]["rsum"]) <= 6 * RECALL


def test_members_that_cannot_share_a_batch_are_refused_by_field(ws):
    base = _configs()["itc"]
    students = [ws.new_student(), ws.new_student()]
    for field, value in (("lr", 1e-3), ("steps", 21), ("batch", 16), ("warmup", 3)):
        with pytest.raises(ValueError, match=f"must share '{field}'"):
            check_members([Member(base, students[0]), Member(replace(base, **{field: value}), students[1])])
    with pytest.raises(ValueError, match="need teacher scores"):
        check_members([Member(_configs()["cprd"], students[0])])
