"""Pairs per second the built-in teacher scores, by request size: the cached fusion (the default) against every pair
through the whole fusion (the reference), side by side in one run, with the largest logit difference between them.

Image and caption encodings are cached in both (computed once, outside the timing). The reference runs with the
chunk it used before the cached path existed (128 pairs on a CPU); the cached path with the scorer's default.

    python benchmarks/teacher_pairs.py [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from workbench.data.world import build_world
from workbench.device import pick_device
from workbench.experiments import DEFAULT_TEACHER, WORLD_PRESETS
from workbench.models.teacher import load_teacher

REFERENCE_CHUNK = {"cpu": 128}  # the chunk of SCORING_VERSION 2 (the accelerator chunk did not change)


def pairs_per_second(scorer, img: torch.Tensor, cap: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Pairs a second over ``repeats`` calls of ``scorer`` on one request, and its scores."""
    start = time.perf_counter()
    for _ in range(repeats):
        out = scorer(img, cap)
    return len(img) * repeats / (time.perf_counter() - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    split = build_world(WORLD_PRESETS["default"]).train
    teacher = load_teacher(DEFAULT_TEACHER).to(device)
    cached = teacher.pair_scorer(split)
    full = teacher.pair_scorer(split, chunk=REFERENCE_CHUNK.get(device.type), cached_fusion=False)
    for scorer in (cached, full):
        scorer(torch.tensor([0]), torch.tensor([0]))  # encode every image and caption once, outside the timing
    print(f"device {device.type}, {args.threads} thread(s); chunks: cached {cached.chunk}, full {full.chunk}")
    gen = torch.Generator().manual_seed(0)
    for n in (100, 500, 2000, 8000):
        img = torch.randint(0, split.num_images, (n,), generator=gen)
        cap = torch.randint(0, split.num_captions, (n,), generator=gen)
        repeats = max(1, 20_000 // n)
        fast, got = pairs_per_second(cached, img, cap, repeats)
        slow, want = pairs_per_second(full, img, cap, repeats)
        print(f"{n:>5} pairs a request: cached {fast:,.0f} pairs/s, full fusion {slow:,.0f} pairs/s, "
              f"ratio {fast / slow:.2f}x; max |logit difference| {(got - want).abs().max().item():.1e} "
              f"(logits up to {want.abs().max().item():.1f})")


if __name__ == "__main__":
    main()
