"""Finding 3 coordination: gradient cosines on hand-built losses and a naive loop; the probe against train_step."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from workbench.data.nearmiss import build_near_misses
from workbench.data.world import build_world
from workbench.experiments import WORLD_PRESETS
from workbench.findings.coordination import (
    CoordinationProbe,
    gradient_cosine,
    gradient_report,
    term_gradients,
)
from workbench.models.student import DualEncoder, StudentConfig
from workbench.training.batches import sample_pairs
from workbench.training.config import FitConfig, LossTerm
from workbench.training.loop import StepContext, batch_terms, build_losses, fit, init_state, train_step

SMALL = StudentConfig(dim=32, embed_dim=32, heads=2, mlp=64, image_layers=1, text_layers=1, max_words=24)
TERMS = (LossTerm("itc"), LossTerm("cprd", 1.0, {"validity": "top", "m": 2}), LossTerm("kl", 0.5))


class TwoTowers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.left, self.right = nn.Linear(4, 3), nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def _losses(m: TwoTowers) -> dict[str, torch.Tensor]:
    x = torch.linspace(-1, 1, 8).reshape(2, 4)
    left, right = m.left(x), m.right(x)
    both = ((left - right) ** 2).sum() * m.scale + (left * m.frozen).sum()
    return {"itc": both, "same": 3.0 * both, "negated": -both, "left_only": left.pow(2).sum(),
            "right_only": right.pow(2).sum() * m.scale, "mixed": both + left.sum()}


def _naive_cosine(m: nn.Module, make, a: str, b: str) -> float:
    """Per-parameter loop: .backward() of each loss separately, dot products and norms accumulated by hand."""
    grads = {}
    for name in (a, b):
        m.zero_grad(set_to_none=True)
        make(m)[name].backward()
        grads[name] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in m.parameters()
                       if p.requires_grad]
    dot = na = nb = 0.0
    for ga, gb in zip(grads[a], grads[b], strict=True):
        for x, y in zip(ga.flatten().tolist(), gb.flatten().tolist(), strict=True):
            dot, na, nb = dot + x * y, na + x * x, nb + y * y
    m.zero_grad(set_to_none=True)
    return dot / math.sqrt(na * nb)


def test_gradient_cosine_hand_cases_and_naive_loop() -> None:
    m = TwoTowers()
    cos = gradient_cosine(m, _losses(m), reference="itc")
    assert cos["same"] == pytest.approx(1.0) and cos["negated"] == pytest.approx(-1.0)
    assert gradient_cosine(m, _losses(m), reference="left_only")["right_only"] == 0.0  # disjoint parameters
    assert cos["mixed"] == pytest.approx(_naive_cosine(m, _losses, "itc", "mixed"), rel=1e-9)
    assert cos["left_only"] == pytest.approx(_naive_cosine(m, _losses, "itc", "left_only"), rel=1e-9)
    assert all(p.grad is None for p in m.parameters())  # autograd.grad leaves .grad alone


def test_gradient_report_norms_and_scalar_parameters() -> None:
    m = TwoTowers()
    out = gradient_report(m, _losses(m), reference="itc")
    grads = term_gradients(m, _losses(m))
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads["mixed"]))
    assert out["gradnorm_mixed"] == pytest.approx(norm)
    assert "cos_itc" not in out and out["cos_same"] == pytest.approx(1.0)
    # d(right_only)/d(scale) = sum(right^2), by hand
    x = torch.linspace(-1, 1, 8).reshape(2, 4)
    assert out["grad_scale_right_only"] == pytest.approx(float(m.right(x).detach().pow(2).sum()), rel=1e-6)
    assert out["grad_scale_left_only"] == 0.0


def test_gradient_cosine_undefined_and_bad_input() -> None:
    m = TwoTowers()
    terms = _losses(m) | {"constant": torch.tensor(2.0), "zero_grad": 0.0 * _losses(m)["itc"]}
    cos = gradient_cosine(m, terms)
    assert cos["constant"] is None and cos["zero_grad"] is None
    with pytest.raises(ValueError, match="reference 'nope' must be one of"):
        gradient_cosine(m, terms, reference="nope")
    with pytest.raises(ValueError, match=r"terms\['vec'\] must be a scalar"):
        gradient_cosine(m, {"itc": terms["itc"], "vec": m.left.weight.sum(0)})
    with pytest.raises(ValueError, match="at least one trainable parameter"):
        gradient_cosine(nn.Linear(2, 2).requires_grad_(False), {"itc": torch.tensor(1.0)})


# --- the probe on the built-in world --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world():
    return build_world(WORLD_PRESETS["smoke"])


def _teacher(world):
    """A stand-in teacher: a monotone function of the world's graded relevance (ties included)."""

    def scores(img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = 6.0 * world.train.relevance_pairs(img.cpu(), cap.cpu()) - 3.0
        return logits, torch.sigmoid(logits)

    return scores


@pytest.mark.parametrize(("pool", "near"), [("batch", False), ("queue", False), ("batch", True)])
def test_batch_terms_gradients_equal_train_step(world, pool, near) -> None:
    """The probe's terms are the trainer's: their summed gradient is what train_step back-propagates."""
    cfg = FitConfig(losses=TERMS, batch=16, k=4, pool=pool, steps=5, warmup=1, near_misses=near, queue_size=64)
    torch.manual_seed(0)
    student = DualEncoder(SMALL)
    state = init_state(cfg, student, torch.device("cpu"))
    ctx = StepContext(world, cfg, student, build_losses(cfg), _teacher(world),
                      build_near_misses(world.train) if near else None, torch.device("cpu"))
    if pool == "queue":
        for d in ("i2t", "t2i"):
            state.queues[d].push(torch.nn.functional.normalize(torch.randn(40, 32), dim=-1), torch.arange(40) + 100)
    queues = copy.deepcopy(state.queues)
    state.generator = torch.Generator().manual_seed(11)
    state.optimizer.step = lambda *args, **kwargs: None  # keep the parameters; read the gradients
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "lr_scheduler.step() before optimizer.step()"
        train_step(state, ctx)
    trained = {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}
    state.queues = queues  # train_step pushed the batch; restore the pool it mined from
    gen = torch.Generator().manual_seed(11)
    img, cap = sample_pairs(world.train, cfg.batch, gen)
    terms = batch_terms(student, cfg, world, img, cap, gen, teacher_scores=_teacher(world), pools=state,
                        near=ctx.near)
    assert set(terms) == {"itc", "cprd", "kl"}
    grads = term_gradients(student, terms)
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    for i, name in enumerate(names):
        total = sum(grads[t][i] for t in terms)
        torch.testing.assert_close(total, trained[name], rtol=1e-4, atol=1e-6, msg=name)


def test_probe_is_repeatable_and_leaves_the_student_alone(world) -> None:
    cfg = FitConfig(losses=TERMS, batch=16, k=4)
    torch.manual_seed(1)
    student = DualEncoder(SMALL).eval()
    probe = CoordinationProbe(cfg, world, _teacher(world), batch=12, seed=5)
    before = {n: p.detach().clone() for n, p in student.state_dict().items()}
    rng = torch.get_rng_state()
    first, second = probe.measure(student), probe.measure(student)
    assert first == second
    assert set(first) >= {"cos_cprd", "cos_kl", "gradnorm_itc", "gradnorm_cprd", "grad_log_scale_cprd"}
    assert all(-1.0 <= first[k] <= 1.0 for k in ("cos_cprd", "cos_kl"))
    assert not student.training and all(p.grad is None for p in student.parameters())
    assert all(torch.equal(before[n], p) for n, p in student.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    other = CoordinationProbe(cfg, world, _teacher(world), batch=12, seed=6).measure(student)
    assert other["cos_cprd"] != first["cos_cprd"]  # another probe batch


def test_probe_gallery_pool_and_errors(world) -> None:
    cfg = FitConfig(losses=TERMS, batch=16, k=4, pool="gallery")
    torch.manual_seed(2)
    out = CoordinationProbe(cfg, world, _teacher(world), batch=8).measure(DualEncoder(SMALL))
    assert out["cos_cprd"] is not None and out["gradnorm_kl"] > 0
    queue = CoordinationProbe(cfg.with_(pool="queue"), world, _teacher(world))
    with pytest.raises(ValueError, match="pool='queue' mines from a run's queue"):
        queue.measure(DualEncoder(SMALL))
    with pytest.raises(ValueError, match="at least one other term"):
        CoordinationProbe(FitConfig(), world)
    with pytest.raises(ValueError, match="need teacher scores"):
        CoordinationProbe(cfg, world)
    with pytest.raises(ValueError, match="batch must be <= 400"):
        CoordinationProbe(cfg, world, _teacher(world), batch=401)


def test_probe_callback_logs_into_fit_history(world) -> None:
    cfg = FitConfig(losses=TERMS, batch=16, k=4, steps=2, eval_every=1, warmup=1)
    torch.manual_seed(3)
    student = DualEncoder(SMALL)
    probe = CoordinationProbe(cfg, world, _teacher(world), batch=8)
    state = fit(cfg, world, student, teacher_scores=_teacher(world), callbacks=(probe.callback(student),))
    assert [row["step"] for row in state.history] == [1, 2]
    for row in state.history:
        assert isinstance(row["cos_cprd"], float) and isinstance(row["cos_kl"], float)
    assert state.history[0]["cos_cprd"] != state.history[1]["cos_cprd"]  # the student moved between probes


# ------------------------------------------------------------------- like with like: slate pushes, held-out steps


def _slate(B: int = 4, L: int = 6, seed: int = 0):
    from workbench.losses import ScoreBatch

    g = torch.Generator().manual_seed(seed)
    positive = torch.zeros(B, L, dtype=torch.bool)
    positive[:, 0] = True
    return ScoreBatch(student=torch.randn(B, L, generator=g) * 3, positive=positive,
                      teacher=torch.randn(B, L, generator=g) * 2)


def test_slate_pushes_hand_signs() -> None:
    """ITC against itself: never in conflict; its negation: conflict everywhere; CPRD leaves the positive alone."""
    from workbench.findings.coordination import slate_pushes
    from workbench.losses import get_loss

    batch = _slate()
    anti = lambda b: {"anti_loss": -get_loss("infonce")(b)["itc_loss"]}  # noqa: E731
    out = slate_pushes(batch, {"anti": anti, "cprd": get_loss("cprd", validity="top", m=2)})
    assert out["infonce"] == {"neg_up": 0.0, "above_pos": 0.0, "pos_down": 0.0}
    assert out["anti"] == {"neg_up": 1.0, "above_pos": 1.0, "pos_down": 1.0}
    assert out["cprd"]["pos_down"] == 0.0 and 0.0 < out["cprd"]["neg_up"] < 1.0  # it lifts its top-ranked negatives
    assert out["cprd"]["above_pos"] == out["cprd"]["neg_up"]  # the positive's push is 0: any lift shrinks a margin


def test_held_out_itc_change_follows_the_gradient_and_restores_the_model() -> None:
    from workbench.findings.coordination import held_out_itc_change

    model = TwoTowers()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.linspace(-1, 1, 8).reshape(2, 4)

    def held_out() -> torch.Tensor:
        return ((model.left(x) - model.right(x)) ** 2).sum()

    loss = held_out()
    terms = {"same": 2.0 * loss, "opposite": -loss, "unrelated": (model.frozen * 0.0).sum()}
    out = held_out_itc_change(model, terms, held_out, step=0.01, skip=("scale",))
    assert out["same"] < 0 < out["opposite"] and out["unrelated"] is None
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_batch_terms_and_slates_are_the_terms_batch_terms_builds(world) -> None:
    from workbench.training.loop import batch_terms_and_slates

    cfg = FitConfig(losses=TERMS, batch=16, k=4)
    torch.manual_seed(4)
    student = DualEncoder(SMALL)
    img, cap = sample_pairs(world.train, cfg.batch, torch.Generator().manual_seed(2))
    terms = batch_terms(student, cfg, world, img, cap, torch.Generator().manual_seed(9), teacher_scores=_teacher(world))
    again, slates = batch_terms_and_slates(student, cfg, world, img, cap, torch.Generator().manual_seed(9),
                                           teacher_scores=_teacher(world))
    assert {k: v.item() for k, v in terms.items()} == {k: v.item() for k, v in again.items()}
    assert len(slates) == 2 and all(sl.student.shape[0] == cfg.batch for sl in slates)
    assert all((sl.positive & sl.mask).any(-1).all() for sl in slates)  # every row holds its positive
    _, none = batch_terms_and_slates(student, FitConfig(batch=16), world, img, cap, torch.Generator())
    assert none == []  # ITC alone mines no slate


def test_shared_slate_coordination_on_the_world(world) -> None:
    from types import SimpleNamespace

    from workbench.findings.coordination import shared_slate_coordination

    cfg = FitConfig(losses=(LossTerm("itc"), LossTerm("cprd", 1.0, {"validity": "top", "m": 2}), LossTerm("kl"),
                            LossTerm("listmle")), batch=16, k=4, pool="gallery")
    torch.manual_seed(5)
    student = DualEncoder(SMALL)
    before = {n: p.detach().clone() for n, p in student.state_dict().items()}
    data = SimpleNamespace(train=world.val)
    out = shared_slate_coordination(student, cfg, data, _teacher(world), batch=16)
    assert set(out) == {"itc", "cprd", "kl", "listmle"}
    assert out["itc"]["neg_up"] == 0.0  # ITC against itself (the control)
    for name in ("cprd", "listmle"):  # rank losses never move the positive: every negative pushed up rises above it
        assert 0.0 <= out[name]["neg_up"] <= 1.0 and out[name]["above_pos"] == out[name]["neg_up"]
        assert out[name]["pos_down"] == 0.0
    assert all(isinstance(v["held_out_itc_change"], float) for v in out.values())
    assert all(torch.equal(before[n], p) for n, p in student.state_dict().items())
    assert shared_slate_coordination(student, cfg, data, _teacher(world), batch=16) == out  # repeatable
