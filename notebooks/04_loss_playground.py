# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · The loss playground: CPRD's anatomy on one batch
#
# In this notebook we take Contrastive Partial Ranking Distillation apart on **one cached training batch**:
# a student's in-batch scores, its mined hard negatives, and the teacher's scores for them. The distillation loss
# is chosen from a dropdown (any registered loss, CPRD by default); sliders for K, the weight λ and the loss's own
# hyperparameters (for CPRD: the temperature T, the validity rule and its threshold θ or its M; built from the
# registry's declared types and ranges) update, live and without retraining:
#
# - the loss value `L = L_ITC + λ · L_CPRD` (each term averaged over image→text and text→image, as the trainer does),
# - a heatmap of the **per-pair gradient weights** `−∂L/∂s` on every slate entry (autograd),
# - the **implied target order**: the teacher's order over the *valid* hard negatives; invalid ones are greyed,
#   because CPRD only asks them to sit below every valid one, in no particular order.
#
# Then we write a new loss in a cell, register it, drive it from the same playground, and compare it with the
# others: loss values on the cached batch, and a short training run each. In smoke mode (`WORKBENCH_SMOKE=1`) the
# student is barely trained, so its numbers only show that the code runs; every figure and table says so.
#
# Recall (docs/method.md), per query with teacher-ordered valid negatives `c_1 … c_J` among its K mined ones:
#
# $$\ell_i = \sum_{j=1}^{J} -\log \frac{e^{s_{i,c_j}/T}}{\sum_{k \ge j} e^{s_{i,c_k}/T}}$$

# %%
# %load_ext autoreload
# %autoreload 2

# %% tags=["parameters"]
import os
from pathlib import Path

SMOKE = os.environ.get("WORKBENCH_SMOKE", "0") == "1"  # CI: tiny world, a few dozen steps, seconds
SEED = 0
OUT = Path(os.environ.get("WORKBENCH_OUT", "../runs/notebooks"))  # run folders
FIGURE_DIR = OUT / "figures"  # under runs/ (git-ignored); only `make figures` writes the tracked figures/
WORLD = "smoke" if SMOKE else "default"
ITC_STEPS = 40 if SMOKE else 600  # the student whose batch we cache (ITC only)
BATCH = 32 if SMOKE else 64  # the cached batch: BATCH images with one caption each
RUN_STEPS = 6 if SMOKE else 300  # each comparison run at the end

# %%
import math

import torch

from workbench.experiments import WORLD_PRESETS, open_workspace
from workbench.findings.plots import save_figure
from workbench.interactive.figure_view import show_figure, show_table
from workbench.interactive.loss_playground import LossPlayground, gradient_heatmap
from workbench.interactive.playground import (
    DIRECTIONS_NOTE,
    Settings,
    cache_batch,
    compare_losses,
    compare_runs,
    implied_order,
    objective,
    ordered_negatives,
)
from workbench.losses import ScoreBatch, at_least, get_loss, list_losses, positive, register_loss
from workbench.losses.cprd import VALIDITY_RULES
from workbench.losses.ranking import plackett_luce_nll
from workbench.training.config import LossTerm, profile
from workbench.training.loop import fit

# %% [markdown]
# ## 1. A student, and one batch frozen
#
# The built-in world, its committed cross-encoder teacher, and a student trained briefly with ITC alone (so its
# hard negatives are the ones CPRD would see early in training). We then freeze one training batch: the
# student's logits `s` for every image × caption pair, the true-match mask, and the teacher's logit and
# probability for every pair.

# %%
ws = open_workspace(WORLD_PRESETS[WORLD])
torch.manual_seed(SEED)
student = ws.new_student()
fit(profile("smoke" if SMOKE else "quick", steps=ITC_STEPS, seed=SEED), ws.world, student)
cached = cache_batch(ws.world.train, student, ws.teacher_scores(), batch=BATCH, seed=SEED)
negatives = ~cached.positive
print(f"B = {cached.size} pairs; up to K = {cached.max_k()} in-batch hard negatives per query")
print(f"teacher logit on negatives: median {cached.teacher_logit[negatives].median():.1f}, "
      f"max {cached.teacher_logit[negatives].max():.1f}; on own pairs: median "
      f"{cached.teacher_logit.diagonal().median():.1f}")
assert cached.sim.shape == (BATCH, BATCH) and cached.positive.diagonal().all()
assert torch.isfinite(cached.teacher_logit).all() and cached.max_k() >= 4

# %% [markdown]
# ## 2. The playground
#
# Move a slider and watch the three views change. Things to try:
#
# - **K**: more hard negatives enter every denominator; with the `threshold` rule only those the teacher scores
#   above θ are ordered.
# - **validity**: `threshold` (u ≥ θ, in the teacher's units: switch *teacher u as* between logit and
#   probability), `top` (the teacher's first M), `all` (ListMLE over the slate).
# - **λ** scales the distillation term next to ITC; **T** sharpens (T < 1) or flattens each step's softmax.
# - **heatmap of**: the gradient of λ·CPRD alone, of ITC alone, or of their sum. Red = the objective pushes the
#   student's score up; numbered, outlined cells are the valid negatives in their target order. When no negative
#   is valid (e.g. θ above every teacher score), the widget says so in words instead of drawing an empty map.
# - **distillation loss**: any registered loss; its hyperparameters replace CPRD's sliders.

# %%
playground = LossPlayground(cached, Settings.of(k=8, validity="top", m=3, lam=1.0), smoke=SMOKE)
playground

# %% [markdown]
# What the widget shows is checked here: the value is finite, and moving a slider changes it (and redraws).

# %%
controls = playground.controls
start_value, start_png = playground.value, playground.heatmap.value
assert math.isfinite(start_value)
controls["lam"].value = 2.0
assert playground.value != start_value, "λ moved but the loss did not change"
assert math.isclose(playground.value, playground.result.itc + 2.0 * playground.result.distill)
controls["k"].value = min(12, cached.max_k())
assert playground.heatmap.value != start_png, "the heatmap did not redraw"
controls["lam"].value, controls["k"].value = 1.0, 8  # back to the starting point
assert math.isclose(playground.value, start_value)
print(f"L = {playground.value:.4f} (ITC {playground.result.itc:.4f}, CPRD {playground.result.distill:.4f})")

# %% [markdown]
# ## 3. Three facts you can read off the gradients
#
# 1. **CPRD with validity `all` is ListMLE** over the mined negatives.
# 2. **Invalid negatives are only ever pushed down**: they appear in denominators only, so `−∂L_CPRD/∂s ≤ 0` there.
# 3. **CPRD only redistributes**: every Plackett–Luce step is a softmax minus a one-hot, so each row's gradient
#    sums to zero; raising one valid negative lowers the others.
#
# We use the `threshold` rule with θ at the 70th percentile of the teacher's logits on the mined negatives, so
# that both valid and invalid negatives exist.

# %%
mined = objective(cached, Settings.of(k=8, validity="all")).directions["i2t"].batch
theta = round(float(mined.teacher[mined.negative].quantile(0.7)), 2)
base = Settings.of(k=8, validity="threshold", threshold=theta, lam=1.0)
cprd_all = objective(cached, base.with_(validity="all")).distill
listmle = objective(cached, base, get_loss("listmle")).distill
print(f"CPRD(all) = {cprd_all:.6f}   ListMLE = {listmle:.6f}")
assert math.isclose(cprd_all, listmle, rel_tol=1e-5)

result = objective(cached, base).directions["i2t"]
valid = ordered_negatives(result.batch, base)
invalid = result.batch.negative & ~valid
pull = -result.grad_distill
print(f"θ = {theta} (logit): valid negatives per query {valid.sum(1).float().mean():.2f}, invalid "
      f"{invalid.sum(1).float().mean():.2f}; largest pull on an invalid one: {pull[invalid].max():.2e}")
assert valid.any() and invalid.any()
assert (pull[invalid] <= 1e-7).all()
assert torch.allclose(result.grad_distill.sum(1), torch.zeros(cached.size), atol=1e-5)

# %% [markdown]
# The implied target order of one query, as a table (the playground shows the same for the query slider):

# %%
table = implied_order(cached, base, result, query=0)
show_table(table.round(3), smoke=SMOKE)
assert table.role.iloc[0] == "positive" and list(table.target.dropna()) == list(range(1, int(valid[0].sum()) + 1))

# %%
ax = gradient_heatmap(objective(cached, Settings.of(k=8, validity="top", m=3)).directions["i2t"],
                      Settings.of(k=8, validity="top", m=3))
show_figure(ax.figure, smoke=SMOKE)  # built outside pyplot: shown as a PNG by show_figure
paths = save_figure(ax.figure, "loss_playground_gradients", (FIGURE_DIR,))
assert paths[0].stat().st_size > 0

# %% [markdown]
# ## 4. Write a new loss, register it, compare
#
# A loss is a function of a `ScoreBatch` with keyword-only hyperparameters returning named terms ending in `_loss`.
# Here: **anchored CPRD**, one Plackett–Luce list *[positive, then the teacher's top-M negatives]*, the rest below.
# Its first step is ITC over the slate and the next ones are CPRD's — Finding 3's "coordination" in one formula.
# Decorated, it is at once usable by `get_loss`, the trainer, the CLI syntax and the widgets.

# %%
@register_loss("anchored_cprd", checks={"m": at_least(1), "temperature": positive()})
def anchored_cprd(batch: ScoreBatch, *, m: int = 4, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Plackett-Luce over [positive, teacher's top-m negatives], other negatives below: slate ITC + CPRD in one."""
    s, u, neg = batch.student / temperature, batch.require_teacher("anchored_cprd").detach(), batch.negative
    top = VALIDITY_RULES["top"](torch.where(neg, u, float("-inf")), neg, m=m) & neg
    anchor = batch.positive & batch.mask
    key = torch.where(anchor, float("inf"), u)  # the positive comes first
    return {"distill_loss": plackett_luce_nll(s, key, anchor | top, neg & ~top).mean()}


assert "anchored_cprd" in list_losses()
top3 = Settings.of(k=8, validity="top", m=3)
slate = objective(cached, top3).directions["i2t"].batch
anchored = get_loss("anchored_cprd", m=3)(slate)["distill_loss"]
summed_cprd = get_loss("cprd", validity="top", m=3, normalize="none")  # the sum of its steps, like anchored_cprd
parts = get_loss("infonce")(slate)["itc_loss"] + summed_cprd(slate)["distill_loss"]
print(f"i2t alone: anchored CPRD {anchored:.5f} = slate ITC + CPRD(top 3) {parts:.5f}"
      " (the table below averages i2t and t2i, so its value differs)")
assert torch.isclose(anchored, parts, rtol=1e-5)

# %% [markdown]
# The new loss drives the same playground: choose it in the dropdown above, or open a playground on it. Its
# hyperparameters (`m`, `temperature`) become sliders from their declared types and checks.

# %%
anchored_playground = LossPlayground(cached, Settings.of(k=8, loss="anchored_cprd", m=3), smoke=SMOKE)
assert set(anchored_playground.param_controls) == {"m", "temperature"}
assert math.isclose(anchored_playground.result.distill, objective(cached, top3, get_loss("anchored_cprd", m=3)).distill)
anchored_playground

# %% [markdown]
# Every loss as the distillation term on the same cached slates (K = 8, λ = 1). `grad_norm` is the size of the
# whole update; `pull_valid` the mean push on the negatives CPRD (top 3) calls valid.

# %%
losses = {"cprd (top 3)": get_loss("cprd", validity="top", m=3), f"cprd (θ={theta})": get_loss("cprd", threshold=theta),
          "listmle": get_loss("listmle"), "ranknet": get_loss("ranknet"), "kl": get_loss("kl"),
          "anchored_cprd": get_loss("anchored_cprd", m=3)}
values = compare_losses(cached, losses, top3)
show_table(values.round(4), smoke=SMOKE, note=f"distill, total: {DIRECTIONS_NOTE}.")
assert values.distill.notna().all() and (values.grad_norm > 0).all()

# %% [markdown]
# And a short training run each (ITC + the term, same seed and batches, K = 8; smoke mode: a handful of steps, so
# the numbers only show that everything trains — run with `WORKBENCH_SMOKE=0` for a real comparison). Runs are
# written like CLI runs under `OUT/04/`. (Why is CPRD with `top` M = K − 1 exactly ListMLE? Look at the last step.)

# %%
terms = {"itc": None, "itc+cprd": LossTerm("cprd"),  # the defaults: threshold 0.5 on the teacher's logit
         "itc+listmle": LossTerm("listmle"), "itc+anchored_cprd": LossTerm("anchored_cprd", 1.0, {"m": 3})}
short = profile("smoke" if SMOKE else "quick", steps=RUN_STEPS, seed=SEED, k=8)
runs = compare_runs(ws, terms, short, out_dir=OUT / "04", overwrite=True)  # re-running replaces these runs
show_table(runs.round(2), smoke=SMOKE)
assert list(runs.index) == list(terms) and runs["loss"].map(math.isfinite).all()
assert (OUT / "04" / "itc+anchored_cprd" / "metrics.json").is_file()

# %% [markdown]
# ## Summary
#
# - CPRD's loss on a batch is a sum of InfoNCE steps over the teacher-ordered valid hard negatives; with
#   validity `all` it is ListMLE, and anchored with the positive first it is slate-ITC + CPRD.
# - Its gradient only redistributes score among a query's negatives: valid ones are pulled into the teacher's
#   order, invalid ones are only pushed below them. ITC, by contrast, lifts the positive above everything.
# - The validity rule decides how much of the teacher's order is trusted; on this world the teacher's logits on
#   true negatives are far below 0, so a threshold of 0.5 leaves few valid negatives early in training.
#
# ## Exercises (predict before you run)
#
# 1. Set validity to `threshold` and sweep θ from its minimum up. Predict the shape of the loss-vs-θ curve, and
#    which heatmap columns lose their numbers first.
# 2. With validity `top`, lower T from 1 to 0.1. Will the gradient concentrate on the first valid negative or
#    spread over all of them? Check with the heatmap.
# 3. Register a variant that orders only the teacher's *bottom* M hard negatives (the "easy end" of the slate).
#    Predict its row in the comparison table relative to `cprd (top 3)`, drive it from the playground (its
#    dropdown), then run the short training.
