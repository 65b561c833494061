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
# # 00 · Quickstart: a short tour
#
# In this notebook we take a short tour of the workbench: the built-in image–caption **world**, its
# cross-encoder **teacher** against a dual-encoder **student** on minimal pairs, **one CPRD run** next to an ITC
# run, and **one figure** comparing them.
#
# The paper (Chen et al., CVPR 2024) distils a cross-encoder (accurate, slow: image and text read together) into
# a dual-encoder (fast: each side embedded alone). Its method, CPRD, lets the student mine its own hard negatives,
# lets the teacher *order* them, and teaches the student that order over the *valid* hard negatives, with an
# InfoNCE-shaped loss added to the student's contrastive loss (ITC).
#
# Full mode took about 6 minutes (370 s, `make book`) on the workbench's 2-core CPU with another job on the
# second core (README, "Reading group"); `WORKBENCH_SMOKE=1` runs the same cells in seconds on a tiny world, and
# then every figure and table says that its numbers only show that the code runs.

# %%
# %load_ext autoreload
# %autoreload 2

# %% tags=["parameters"]
import os
from pathlib import Path

SMOKE = os.environ.get("WORKBENCH_SMOKE", "0") == "1"  # CI: tiny world, a few steps, seconds
SEED = 0
OUT = Path(os.environ.get("WORKBENCH_OUT", "../runs/notebooks"))  # run folders
FIGURE_DIR = OUT / "figures"  # under runs/ (git-ignored); only `make figures` writes the tracked figures/
WORLD = "smoke" if SMOKE else "default"
PROFILE = "smoke" if SMOKE else "quick"
STEPS = 20 if SMOKE else 300  # each of the two student runs

# %%
import numpy as np
import pandas as pd
import torch

from workbench.evaluation.evaluate import evaluate_teacher, student_scorer, teacher_token_scorer
from workbench.experiments import WORLD_PRESETS, open_workspace, train_run
from workbench.findings.plots import image_grid, method_bars, save_figure, world_grid
from workbench.interactive.figure_view import show_figure, show_table
from workbench.training.checkpoint import load_student
from workbench.training.config import LossTerm, profile

# %% [markdown]
# ## 1. The world
#
# Small images of 3 objects (shape, colour, size) on a 3 × 3 grid, each with 5 captions from a compositional
# grammar (the default world, preset `contrast-chain-v1`). Every caption names all three objects and chains them
# by two spatial relations ("the small red circle is left of the big blue square which is above ..."), so
# captions with the same words can mean different things: a model must bind attributes to objects *and* read
# where they are. Images come in contrast groups of 3 (the same objects, other arrangements), and a caption is
# false for its siblings: few captions are true of another image, so a student's mined hard negatives are nearly
# free of false negatives (about 1 % with own-caption positives; README, "The room"). The world knows the truth of
# every caption for every image. The older world (`ambiguous-v1`: short partial captions, each true of many
# images) stays as a preset; there about a third of the mined negatives are false negatives.

# %%
ws = open_workspace(WORLD_PRESETS[WORLD])
test = ws.world.test
for name in ("train", "val", "test"):
    s = ws.world.split(name)
    print(f"{name:5s}: {s.num_images:5d} images, {s.num_captions:6d} captions")
paths = save_figure(show_figure(world_grid(test, n=8), smoke=SMOKE), "world_examples", (FIGURE_DIR,))
own = test.relevance_pairs(test.caption_image, torch.arange(test.num_captions))
assert paths[0].stat().st_size > 0
assert test.num_captions == 5 * test.num_images and bool((own == 1).all()), "every caption is true for its image"

# %% [markdown]
# ## 2. Teacher vs student on minimal pairs
#
# A minimal pair is an image, one of its true captions, and a *near-miss* of it: colours swapped between the two
# objects, shapes swapped, the relation flipped, or one attribute changed. 50% is chance. The teacher (committed
# checkpoint) reads image and caption together; the student (preset `moments-v1`: each image cell keeps its
# coordinates and is pooled into mean, column and row moments; a 2-layer text transformer) is trained here with
# ITC alone. This student *can* represent relations: trained with privileged signal (every near-miss as a
# negative) it reaches 94–97 % on flipped relations, but ITC alone leaves it near 50 %. That gap is the room a
# teacher could fill (README, "The room"); the older `relation-blind-v1` student cannot hold relations at all,
# whatever the signal.

# %%
itc_run = train_run(ws, profile(PROFILE, steps=STEPS, seed=SEED), OUT / "00" / "itc", rerank=False,
                    overwrite=True)  # re-running the notebook replaces its own run
student = load_student(OUT / "00" / "itc" / "checkpoint")
minimal, graded = ws.eval_sets("test")
teacher_mp = evaluate_teacher(ws.teacher, test, minimal)["minimal_pairs"]
accuracy = pd.DataFrame({"teacher (cross-encoder)": teacher_mp, "student (ITC)": itc_run["minimal_pairs"]}).T
show_table(accuracy.round(1), smoke=SMOKE)
assert teacher_mp["mean"] > 60 and teacher_mp["mean"] > itc_run["minimal_pairs"]["mean"]

# %% [markdown]
# One pair of each kind, with each model's margin `score(true) − score(false)` (teacher T: ITM logit; student S:
# cosine). A positive margin means the model prefers the true caption.

# %%
first = [minimal.kind.index(k) for k in dict.fromkeys(minimal.kind)]  # one pair per kind
img, true, false = minimal.image[first], minimal.tokens_true[first], minimal.tokens_false[first]
scorers = {"T": teacher_token_scorer(ws.teacher, test), "S": student_scorer(student, test)}
with torch.no_grad():
    margin = {who: (f(img, true) - f(img, false)).tolist() for who, f in scorers.items()}
captions = [[minimal.kind[p], f"true:  {test.texts[minimal.caption[p]]}", f"false: {minimal.texts_false[p]}",
             "margin: " + ", ".join(f"{who} {margin[who][n]:+.3f}" for who in margin)] for n, p in enumerate(first)]
fig = show_figure(image_grid(test.images[img], captions, ncols=len(first)), smoke=SMOKE)
save_figure(fig, "quickstart_minimal_pairs", (FIGURE_DIR,))
assert len(first) == 4 and all(np.isfinite(m).all() for m in margin.values())

# %% [markdown]
# ## 3. One CPRD run
#
# Same seed, same batches; the only change is the extra term `CPRD` with its defaults: of the student's K = 8
# mined hard negatives, those the teacher scores at least θ = 0.5 (ITM logit) are *valid* and must follow the
# teacher's order; the others must only sit below them.

# %%
cprd_term = LossTerm("cprd")  # validity="threshold", threshold=0.5, weight λ = 1
cprd_run = train_run(ws, profile(PROFILE, steps=STEPS, seed=SEED, losses=(LossTerm("itc"), cprd_term)),
                             OUT / "00" / "cprd", rerank=False, overwrite=True)
print(f"teacher: {cprd_run['teacher_store']['computed_pairs']} pairs scored, "
      f"{cprd_run['teacher_store']['hits']} lookups answered from the cache")
assert cprd_run["teacher_store"]["computed_pairs"] > 0 and (OUT / "00" / "cprd" / "metrics.json").is_file()

# %% [markdown]
# ## 4. One figure
#
# Test-split retrieval (semantic protocol: every true caption counts as a hit) and minimal-pair accuracy. One short
# run per method and one seed: read it as "both train", not as a verdict on CPRD.

# %%
metrics = ["R@1 i2t", "R@1 t2i", "R@5 i2t", "minimal pairs"]


def row(run: dict) -> list[float]:
    sem = run["retrieval"]["semantic"]
    return [sem["r1_i2t"], sem["r1_t2i"], sem["r5_i2t"], run["minimal_pairs"]["mean"]]


means = np.array([row(itc_run), row(cprd_run)])
ax = method_bars(["ITC", "ITC + CPRD"], means, np.full_like(means, np.nan), metrics)  # one seed: no error bars
ax.set_title(f"{WORLD} world, {STEPS} steps, seed {SEED}: one run each, so no error bars\n"
             "(make demo trains 3 seeds per method and shows mean ± std)", fontsize=9)
show_figure(ax.figure, smoke=SMOKE)
save_figure(ax.figure, "quickstart_itc_vs_cprd", (FIGURE_DIR,))
show_table(pd.DataFrame(means, index=["ITC", "ITC + CPRD"], columns=metrics).round(1), smoke=SMOKE)
assert np.isfinite(means).all() and ((means >= 0) & (means <= 100)).all()

# %% [markdown]
# ## Summary
#
# - The built-in world has hard negatives by construction (near-miss captions), and ground truth for all of them.
# - The cross-encoder teacher tells near-misses apart far better than a dual-encoder trained with ITC: that gap is
#   what distillation tries to transfer.
# - A CPRD run is one more loss term on the same training loop; its teacher scores come from a cache, so each
#   pair is scored once.
#
# Where next: `01_score_distributions` (why logit distillation struggles), `02_hard_vs_easy_negatives` (which
# part of the teacher's order matters), `03_train_with_cprd` (train from a panel), `04_loss_playground` (CPRD's
# anatomy on one batch), `05_real_models` (BLIP → CLIP on Flickr30K / COCO).
#
# ## Exercises (predict before you run)
#
# 1. Which minimal-pair kind will the ITC student find hardest, and why can a bag-of-words model not beat 50%
#    on it? Check the table.
# 2. Double `STEPS`. Predict whether the gap between ITC and ITC + CPRD grows or shrinks, then run it.
# 3. Change CPRD's validity to `all` (ListMLE over the mined negatives). Finding 2 predicts the effect; does it show?
