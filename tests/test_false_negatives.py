"""Teacher-detected false negatives (``drop_teacher_matches``): mined negatives the teacher scores as matches leave
every distillation slate: neither ordered nor in any denominator, as if they had never been mined."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from workbench.experiments import WORLD_PRESETS, open_workspace
from workbench.losses import ScoreBatch, get_loss
from workbench.training.config import FitConfig, LossTerm, profile
from workbench.training.loop import fit
from workbench.training.slates import teacher_matches, with_teacher


def _slate(probs: torch.Tensor) -> ScoreBatch:
    positive = torch.zeros_like(probs, dtype=torch.bool)
    positive[:, 0] = True
    return ScoreBatch(student=torch.zeros_like(probs), positive=positive)


def test_the_teacher_s_matches_leave_the_slate_hand_computed():
    probs = torch.tensor([[0.9, 0.6, 0.4, 0.5], [0.1, 0.2, 0.95, 0.3]])
    logits = torch.logit(probs)
    kept = with_teacher(_slate(probs), logits, probs, FitConfig(drop_teacher_matches=True, match_threshold=0.5))
    # the positive stays whatever the teacher says; negatives at or above 0.5 go
    assert kept.mask.tolist() == [[True, False, True, False], [True, True, False, True]]
    assert torch.equal(kept.teacher, logits)  # the losses still see the configured view (logits)
    off = with_teacher(_slate(probs), logits, probs, FitConfig())
    assert off.mask.all()
    assert teacher_matches(probs, _slate(probs).positive, 0.96).sum() == 0


@pytest.mark.parametrize("loss", ["cprd", "listmle", "kl"])
def test_a_dropped_negative_is_as_if_it_had_never_been_mined(loss):
    """Oracle: the loss on the slate with dropped entries = the mean over rows of the loss on each row's slate with
    those columns removed (value and gradient)."""
    torch.manual_seed(0)
    b, length = 5, 9
    s = torch.randn(b, length, requires_grad=True)
    u = torch.randn(b, length)
    probs = torch.rand(b, length)
    positive = torch.zeros(b, length, dtype=torch.bool)
    positive[:, 0] = True
    batch = with_teacher(ScoreBatch(student=s, positive=positive), u, probs,
                         FitConfig(drop_teacher_matches=True, match_threshold=0.6))
    assert 0 < (~batch.mask).sum() < b * (length - 1)  # the case drops some, not all
    fn = get_loss(loss, **({"validity": "top", "m": 3} if loss == "cprd" else {}))
    fast = fn(batch)["distill_loss"]
    (grad_fast,) = torch.autograd.grad(fast, s)
    rows = []
    for i in range(b):
        keep = batch.mask[i]
        one = ScoreBatch(student=s[i, keep][None], positive=positive[i, keep][None], teacher=u[i, keep][None])
        rows.append(fn(one)["distill_loss"])
    naive = torch.stack(rows).mean()
    (grad_naive,) = torch.autograd.grad(naive, s)
    torch.testing.assert_close(fast, naive)
    torch.testing.assert_close(grad_fast, grad_naive)


@pytest.fixture(scope="module")
def ws():
    return open_workspace(WORLD_PRESETS["smoke"], store_path=None)


class ConstantProbabilityTeacher:
    """Teacher scores for the trainer: logits from the pair's ids (an arbitrary fixed order), one probability."""

    def __init__(self, probability: float):
        self.probability = probability

    def __call__(self, img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = ((img * 31 + cap * 17) % 13).float() - 6.0
        return logits, torch.full_like(logits, self.probability)


def _run(ws, cfg, teacher):
    torch.manual_seed(cfg.seed)
    return fit(cfg, ws.world, ws.new_student(), teacher_scores=teacher).history


def test_the_trainer_drops_what_the_teacher_calls_a_match(ws):
    """End to end: a teacher that calls nothing a match leaves the run bit-identical to one without the rule; a teacher
    that calls every pair a match leaves CPRD nothing to order (its loss is 0 at every step)."""
    cfg = profile("smoke", steps=6, eval_every=3, pool="gallery", positives="coco",
                  losses=(LossTerm("itc"), LossTerm("cprd", 1.0, {"validity": "top", "m": 2})))
    plain = _run(ws, cfg, ConstantProbabilityTeacher(0.2))
    clean = _run(ws, replace(cfg, drop_teacher_matches=True), ConstantProbabilityTeacher(0.2))
    assert [r["cprd_loss"] for r in plain] == [r["cprd_loss"] for r in clean]
    assert plain[-1]["cprd_loss"] > 0
    emptied = _run(ws, replace(cfg, drop_teacher_matches=True), ConstantProbabilityTeacher(0.5))
    assert all(r["cprd_loss"] == 0.0 for r in emptied)


def test_the_rule_needs_a_teacher_and_a_probability_threshold(ws):
    cfg = profile("smoke", steps=2, drop_teacher_matches=True, losses=(LossTerm("itc"), LossTerm("infonce")))
    with pytest.raises(ValueError, match="drop_teacher_matches"):
        fit(cfg, ws.world, ws.new_student())
    with pytest.raises(ValueError, match="match_threshold"):
        FitConfig(match_threshold=1.5)
