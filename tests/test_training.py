"""The trainer: resume determinism, pools and negatives, teacher-free distillation terms, the controlled teacher."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from workbench.experiments import WORLD_PRESETS, open_workspace
from workbench.models.controlled import ControlledConfig, ControlledTeacher
from workbench.training.config import FitConfig, LossTerm, profile
from workbench.training.loop import StopTraining, fit, needs_teacher


@pytest.fixture(scope="module")
def ws():
    return open_workspace(WORLD_PRESETS["smoke"], store_path=None)


def _student(ws, seed: int = 0):
    torch.manual_seed(seed)
    return ws.new_student()


def _weights(student) -> list[torch.Tensor]:
    return [p.detach().clone() for p in student.state_dict().values()]


@pytest.mark.parametrize("pool", ["batch", "queue", "gallery"])
def test_resume_gives_the_same_run(ws, tmp_path, pool):
    """Interrupted at step 10 and resumed = uninterrupted: same history and bit-identical weights (CPU, same seed)."""
    cfg = profile("smoke", steps=20, eval_every=5, checkpoint_every=10, pool=pool, queue_size=64, refresh_every=7,
                  losses=(LossTerm("itc"), LossTerm("cprd", 1.0, {"validity": "top", "m": 2})))
    scores = ws.teacher_scores()
    full = fit(cfg, ws.world, _student(ws), teacher_scores=scores, out_dir=tmp_path / "full")

    def stop_at_10(step: int, row: dict) -> None:
        if step == 10:
            raise StopTraining  # the 20-step run, stopped at its step 10 (checkpoint saved there)

    fit(cfg, ws.world, _student(ws), teacher_scores=scores, out_dir=tmp_path / "resumed", step_callbacks=(stop_at_10,))
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "config.json").read_text())["step"] == 10
    fresh = _student(ws, seed=99)  # resuming must restore the weights, whatever the new student's init
    torch.manual_seed(123)  # and a different global RNG state must not matter: the run's randomness is its own
    resumed = fit(cfg, ws.world, fresh, teacher_scores=scores, out_dir=tmp_path / "resumed", resume=True)

    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert all(torch.equal(a, b) for a, b in zip(_weights(full.student), _weights(resumed.student), strict=True))


def test_resume_refuses_another_config(ws, tmp_path):
    cfg = profile("smoke", steps=6, eval_every=3)
    fit(cfg, ws.world, ws.new_student(), out_dir=tmp_path)
    with pytest.raises(ValueError, match="different config"):
        fit(replace(cfg, lr=1e-4), ws.world, ws.new_student(), out_dir=tmp_path, resume=True)


def test_teacher_free_terms_need_no_teacher(ws):
    cfg = profile("smoke", steps=4, eval_every=2, pool="gallery", losses=(LossTerm("itc"), LossTerm("infonce")))
    assert not needs_teacher(cfg)
    state = fit(cfg, ws.world, ws.new_student())
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in state.history)
    with pytest.raises(ValueError, match="need teacher scores"):
        fit(profile("smoke", steps=2, losses=(LossTerm("itc"), LossTerm("kl"))), ws.world, ws.new_student())


@pytest.mark.parametrize("negatives,pool", [("easy", "gallery"), ("all", "batch"), ("hard", "queue")])
def test_every_negative_source_trains(ws, negatives, pool):
    cfg = profile("smoke", steps=4, eval_every=4, negatives=negatives, pool=pool, easy_rank=8, queue_size=64,
                  losses=(LossTerm("itc"), LossTerm("listmle")))
    state = fit(cfg, ws.world, ws.new_student(), teacher_scores=ws.teacher_scores())
    assert torch.isfinite(torch.tensor(state.history[-1]["listmle_loss"]))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="negatives='all'"):
        FitConfig(negatives="all", pool="gallery")
    with pytest.raises(ValueError, match="k=200 must be smaller than the batch"):
        FitConfig(k=200, batch=128, losses=(LossTerm("itc"), LossTerm("cprd")))
    FitConfig(k=200, batch=128)  # ITC alone mines nothing: k is not used, so not checked against the batch
    with pytest.raises(ValueError, match="pool must be one of"):
        FitConfig(pool="everything")


def test_controlled_teacher_is_the_ground_truth_plus_knobs(ws):
    split = ws.world.train
    img = torch.randint(split.num_images, (4000,), generator=torch.Generator().manual_seed(0))
    cap = torch.randint(split.num_captions, (4000,), generator=torch.Generator().manual_seed(1))
    rel = split.relevance_pairs(img, cap)
    exact = ControlledTeacher(split, ControlledConfig(noise=0.0, concentration=3.0, bias=-1.0))(img, cap)
    assert torch.allclose(exact, 3.0 * (2 * rel - 1) - 1.0)
    noisy = ControlledTeacher(split, ControlledConfig(noise=2.0, seed=7))
    u = noisy(img, cap)
    assert torch.equal(u, noisy(img, cap))  # the same pair always gets the same score
    residual = u - 6.0 * (2 * rel - 1)
    assert abs(residual.mean().item()) < 0.15 and abs(residual.std().item() - 2.0) < 0.15
    blind = ControlledTeacher(split, ControlledConfig(relations=False))(img, cap)
    assert torch.allclose(blind, 6.0 * (2 * split.mention_relevance_pairs(img, cap) - 1))
    logits, probs = noisy.scores(img, cap)
    assert torch.allclose(probs, torch.sigmoid(logits))
    with pytest.raises(ValueError, match="noise must be >= 0"):
        ControlledConfig(noise=-1.0)


def test_trainer_optimises_only_loss_entries_and_logs_every_named_entry(ws):
    """A loss may return diagnostics besides its ``*_loss`` terms: the trainer logs them all (``<term>.<entry>``,
    mean of the two directions) but optimises only the ``*_loss`` entries."""
    from workbench.losses import ScoreBatch, register_loss, unregister_loss

    @register_loss("with_diagnostic", needs_teacher=False)
    def with_diagnostic(batch: ScoreBatch) -> dict[str, torch.Tensor]:
        """A tiny loss with a huge diagnostic that must not be optimised."""
        s = torch.where(batch.mask, batch.student, 0.0)
        return {"distill_loss": 0.01 * s.mean(), "huge_diagnostic": 1e6 + s.sum()}

    try:
        cfg = profile("smoke", steps=2, eval_every=1, losses=(LossTerm("itc"), LossTerm("with_diagnostic", 0.5)))
        history = fit(cfg, ws.world, _student(ws)).history
    finally:
        unregister_loss("with_diagnostic")
    for row in history:
        assert {"itc.itc_loss", "with_diagnostic.distill_loss", "with_diagnostic.huge_diagnostic"} <= row.keys()
        assert row["with_diagnostic.huge_diagnostic"] > 1e5
        assert row["with_diagnostic_loss"] == pytest.approx(0.5 * row["with_diagnostic.distill_loss"], rel=1e-5)
        assert row["loss"] == pytest.approx(row["itc_loss"] + row["with_diagnostic_loss"], rel=1e-5)
        assert row["itc_loss"] == pytest.approx(row["itc.itc_loss"], rel=1e-6)


def test_cold_and_warm_store_give_bit_identical_runs(tmp_path):
    """Deterministic teacher scores: the same CPRD config and seed trained against a cold store, then against the
    warm one, then against a store another workspace filled in other groupings (a prefill), gives the same history
    and bit-identical test metrics."""
    from workbench.experiments import fill_store, train_run

    cfg = profile("smoke", steps=12, eval_every=6, pool="gallery", refresh_every=5, positives="coco",
                  losses=(LossTerm("itc"), LossTerm("cprd", 1.0, {"validity": "top", "m": 2})))
    cold_ws = open_workspace(WORLD_PRESETS["smoke"], store_path=tmp_path / "a.sqlite")
    cold = train_run(cold_ws, cfg, tmp_path / "cold", rerank=False)
    assert cold["teacher_store"]["computed_pairs"] > 0
    warm = train_run(cold_ws, cfg, tmp_path / "warm", rerank=False)
    assert warm["teacher_store"]["computed_pairs"] == 0
    other_ws = open_workspace(WORLD_PRESETS["smoke"], store_path=tmp_path / "b.sqlite")
    torch.manual_seed(3)
    fill_store(other_ws, other_ws.new_student(), "train", top=4)  # other pairs, other batches
    prefilled = train_run(other_ws, cfg, tmp_path / "prefilled", rerank=False)
    assert prefilled["teacher_store"]["hits"] > 0
    for run in (warm, prefilled):
        assert run["retrieval"] == cold["retrieval"] and run["minimal_pairs"] == cold["minimal_pairs"]
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("cold", "warm", "prefilled")]
    assert histories[0] == histories[1] == histories[2]
