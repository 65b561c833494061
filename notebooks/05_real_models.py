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
# # 05 · Real models: BLIP ITM → CLIP on Flickr30K / MSCOCO
#
# In this notebook we point the workbench at the paper's setting: a **BLIP ITM** cross-encoder
# (`transformers.BlipForImageTextRetrieval`) teaches a **CLIP** dual encoder on the **Karpathy splits of Flickr30K
# or MSCOCO**. Everything else is the code the built-in world uses: the student mines its hard negatives, the
# teacher's scores go through the persistent score store, CPRD is the same loss, evaluation follows the published
# protocol (printed as a *protocol card*, with the exact teacher cost announced before any teacher runs).
#
# **What you need** (details, download commands and costs: `docs/real_data.md`): the Karpathy JSON and the image
# folder, the BLIP ITM and CLIP weights (hub names served from your local cache, or folders written by
# `save_pretrained`), and a GPU. Tell the notebook where they are before starting Jupyter:
#
# ```bash
# export WORKBENCH_KARPATHY_JSON=data/dataset_flickr30k.json   # or data/dataset_coco.json
# export WORKBENCH_IMAGE_ROOT=data/flickr30k-images            # or data/coco (holding train2014/, val2014/)
# export WORKBENCH_TEACHER=Salesforce/blip-itm-base-flickr     # or Salesforce/blip-itm-base-coco, or a folder
# export WORKBENCH_STUDENT=openai/clip-vit-base-patch16
# export HF_HUB_OFFLINE=1                                       # after `hf download ...`: local cache only
# ```
#
# (`WORKBENCH_DATASET=coco|flickr30k` when the JSON's file name does not say which.) Without them, and always in
# smoke mode, the notebook says what is missing and runs the same cells on **tiny stand-ins** generated on the spot:
# a 40-image Karpathy-format dataset of random pictures and randomly initialised BLIP / CLIP models of the same
# `transformers` classes. Then it takes seconds on a CPU and its numbers only show that the code runs.

# %%
# %load_ext autoreload
# %autoreload 2

# %% tags=["parameters"]
import os
from pathlib import Path

SMOKE = os.environ.get("WORKBENCH_SMOKE", "0") == "1"  # CI: always the tiny stand-ins, seconds
SEED = 0
OUT = Path(os.environ.get("WORKBENCH_OUT", "../runs/notebooks"))  # run folders and the teacher-score store
FIGURE_DIR = OUT / "figures"  # under runs/ (git-ignored); only `make figures` writes the tracked figures/
REAL = {"steps": 500, "batch": 64, "k": 8, "eval_every": 100, "queries": 500, "max_images": None}  # on a GPU
TINY = {"steps": 4, "batch": 6, "k": 3, "eval_every": 2, "queries": None, "max_images": None}  # the stand-ins
CPRD_PARAMS = {"validity": "top", "m": 4}  # the demo's rule; or {"validity": "threshold", "threshold": 0.5}
# (a cut on BLIP's ITM log-odds: 0 = probability 0.5)

# %%
import math
import sys

import numpy as np
import pandas as pd
import torch

from workbench.experiments import open_karpathy_workspace, train_run
from workbench.experiments.workspace import REAL_FIT_DEFAULTS
from workbench.findings import figures as fp
from workbench.findings.distributions import describe
from workbench.findings.plots import image_grid, save_figure
from workbench.interactive.figure_view import show_figure, show_table
from workbench.interactive.real_models import RealSources, real_score_groups, real_sources, thumbnails
from workbench.io import read_json
from workbench.training.config import FitConfig, LossTerm

# %% [markdown]
# ## 1. Where the data and weights are
#
# The four environment variables are read once; unset ones and paths that do not exist are listed, never raised.

# %%
sources = real_sources(os.environ)
if SMOKE or not sources.ready:
    print("smoke mode: tiny stand-ins" if SMOKE else sources.explain())
    sys.path.insert(0, str(Path("../tests").resolve()))  # the generators the offline tests use
    from hf_fixtures import save_tiny_blip, save_tiny_clip, write_tiny_karpathy

    tiny = OUT / "05" / "tiny"
    json_path = write_tiny_karpathy(tiny / "data", n_images=40, seed=SEED)
    sources = RealSources("flickr30k", json_path, tiny / "data" / "images", str(save_tiny_blip(tiny / "blip")),
                          str(save_tiny_clip(tiny / "clip")), tiny=True)
RUN = TINY if sources.tiny else REAL
DEVICE = "cpu" if sources.tiny else "auto"  # auto: CUDA when there is one
figure_dir = FIGURE_DIR  # under runs/, real or tiny models alike
print(sources.explain())
assert sources.ready and sources.karpathy_json.is_file() and sources.image_root.is_dir()

# %% [markdown]
# ## 2. The dataset and the protocol card
#
# `open_karpathy_workspace` loads nothing heavy yet: splits are read on first use (every image file is checked to
# exist), the teacher is loaded when first needed, and its scores go to a SQLite store shared by every run and
# evaluation of this teacher on this dataset. The protocol card says what the recalls below mean and whether they
# are comparable with published numbers.

# %%
store = OUT / "05" / "teacher_scores.sqlite"
ws = open_karpathy_workspace(sources.dataset, sources.karpathy_json, sources.image_root, teacher=sources.teacher,
                         student=sources.student, store=store, device=DEVICE, max_images=RUN["max_images"])
test = ws.data.test
card = ws.protocol_card("test")
print(card.text())
sizes = pd.DataFrame({name: {"images": ws.data.split(name).num_images, "captions": ws.data.split(name).num_captions}
                      for name in ("train", "val", "test")}).T
show_table(sizes, smoke=SMOKE)
shown = list(range(min(4, test.num_images)))
captions = [[test.texts[c] for c in torch.nonzero(test.caption_image == i).flatten().tolist()] for i in shown]
grid = show_figure(image_grid(thumbnails(test, shown), captions), smoke=SMOKE)  # shown only, never saved
assert card.num_images == test.num_images and test.num_captions == test.captions_per_image * test.num_images

# %% [markdown]
# ## 3. Teacher and student on one image
#
# The teacher's score is BLIP's ITM **log-odds** (`z_match − z_no_match`, so `sigmoid(u)` is its match
# probability); the student's is CLIP's logit (`logit_scale × cosine`), as downloaded (zero-shot). One test image
# against its own captions and one caption of each of a few other images:

# %%
student = ws.new_student()
scores = ws.teacher_scores("test")  # store-backed: (log-odds, probability) per (image, caption) pair
own = torch.nonzero(test.caption_image == 0).flatten()
others = torch.tensor([int(torch.nonzero(test.caption_image == i)[0]) for i in range(1, min(6, test.num_images))])
cands = torch.cat([own, others])
u, prob = scores(torch.zeros_like(cands), cands)
with torch.no_grad():
    img = student.encode_images(test, torch.tensor([0]))
    txt = student.encode_texts(test, cands)
    s = (student.logit_scale * img @ txt.T)[0].float().cpu()
pairs = pd.DataFrame({"caption": [test.texts[c] for c in cands.tolist()], "own": [True] * len(own) + [False] * len(
    others), "teacher log-odds": u.numpy(), "teacher probability": prob.numpy(), "student logit": s.numpy()})
show_table(pairs.round(3), smoke=SMOKE)
assert torch.isfinite(u).all() and torch.isfinite(s).all() and len(pairs) == len(own) + len(others)

# %% [markdown]
# ## 4. Finding 1 on real models
#
# The score distributions of notebook 01, here for BLIP and CLIP (image → text): each test image's own captions,
# its `K` hardest other captions under the student, and `K` captions drawn beyond the student's rank 100.
# Real data has no graded truth, so Finding 2's agreement analysis (notebook 02) has no counterpart here.

# %%
groups = real_score_groups(student, lambda i, c: scores(i, c)[0], test, k_hard=RUN["k"], k_easy=RUN["k"],
                           queries=RUN["queries"], seed=SEED)
shape = pd.DataFrame({(view, group): {k: describe(v, bounds=(0, 1) if "probability" in view else None)[k]
                                      for k in ("n", "mean", "std", "skewness", "mass_extremes")}
                      for view, by_group in groups.items() for group, v in by_group.items()}).T
show_table(shape.round(3), smoke=SMOKE)
paths = save_figure(show_figure(fp.score_histograms(groups), smoke=SMOKE), "real_models_score_distributions",
                    (figure_dir,))
n_queries = test.num_images if RUN["queries"] is None else min(RUN["queries"], test.num_images)
assert len(groups["student logit"]["positive"]) == n_queries * test.captions_per_image and paths[0].is_file()

# %% [markdown]
# ## 5. Zero-shot, then ITC + CPRD
#
# First the student as downloaded, then a short fine-tuning run with ITC + CPRD (`FitConfig` with the real-data
# defaults: COCO positives, learning rate 1e-5, warm-up, weight decay). Each evaluation prints the teacher's bill
# before it runs; pairs already in the store are free, so the second evaluation costs less. The run folder is
# what `python -m workbench train --dataset ...` writes (config, history, metrics, checkpoint).

# %%
before = ws.evaluate(student, card, announce=print)
cfg = FitConfig(**REAL_FIT_DEFAULTS, losses=(LossTerm("itc"), LossTerm("cprd", 1.0, CPRD_PARAMS)),
                steps=RUN["steps"], batch=RUN["batch"], k=RUN["k"], eval_every=RUN["eval_every"], seed=SEED,
                device=DEVICE)
run_dir = OUT / "05" / "itc+cprd"
after = train_run(ws, cfg, run_dir, card=card, announce=print, overwrite=True)  # re-running replaces it


def row(metrics: dict) -> dict[str, float]:
    coco = metrics["retrieval"]["coco"]
    out = {k: coco[k] for k in coco if k.startswith("r")}
    return out | {"re-ranked RSUM": metrics["rerank"]["coco"]["rsum"]} if "rerank" in metrics else out


results = pd.DataFrame({"zero-shot": row(before), "ITC + CPRD": row(after)}).T
show_table(results.round(1), smoke=SMOKE)
history = read_json(run_dir / "history.json")
print(f"{len(history)} evaluations; last: " + ", ".join(f"{k} {v:.3f}" for k, v in history[-1].items()
                                                       if k.endswith("_loss")))
assert all(math.isfinite(r[k]) for r in history for k in r if k.endswith("_loss"))
assert (run_dir / "checkpoint" / "model.safetensors").is_file() and np.isfinite(results.to_numpy()).all()

# %% [markdown]
# ## 6. The same from a terminal
#
# The notebook is a convenience; long runs belong in a terminal (or under `accelerate launch` on several GPUs,
# `docs/real_data.md` §6). The commands that match this run:

# %%
data = (f"--dataset {sources.dataset} --karpathy-json {sources.karpathy_json} --image-root {sources.image_root} "
        f"--teacher {sources.teacher} --store {store}")
terms = " ".join(f"--loss {t.spell()}" for t in cfg.losses)
commands = [
    f"python -m workbench teacher-scores {data} --split train --top 16 --student {sources.student}",
    f"python -m workbench train {data} --student {sources.student} {terms} --steps {cfg.steps} --batch {cfg.batch} "
    f"--k {cfg.k} --eval-every {cfg.eval_every} --out {run_dir}",
    f"python -m workbench eval --checkpoint {run_dir} --fusion itm+itc",
]
print("\n\n".join(commands))
assert read_json(run_dir / "config.json")["data"]["student"] == sources.student

# %% [markdown]
# ## Summary
#
# - Four environment variables point the workbench at real data and weights; without them it says what is
#   missing and runs the same cells on tiny stand-ins, so the notebook never fails for want of a download.
# - Real data goes through the same trainer, losses, mining and teacher-score store as the built-in world; only the
#   data reader (Karpathy JSON + images) and the model adapters (BLIP ITM, CLIP) differ.
# - Every evaluation prints its protocol card and the exact teacher cost first; the store makes repeated
#   evaluations and later runs cheap.
#
# ## Exercises (predict before you run)
#
# 1. With real models: are BLIP's match probabilities as concentrated as the built-in teacher's (notebook 01), and
#    CLIP's logits as close to normal? Predict, then read section 4.
# 2. Run section 5 twice. Predict how many teacher pair scores the second evaluation announces, and why.
# 3. Switch CPRD's validity to `top` with `m=4` and compare RSUM after the same number of steps (one seed each:
#    how big a difference would convince you?).
