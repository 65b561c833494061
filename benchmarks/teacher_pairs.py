"""Pairs per second the built-in teacher scores (fusion only; image and caption encodings cached), by request size.

    python benchmarks/teacher_pairs.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from workbench.data.world import build_world
from workbench.experiments import DEFAULT_TEACHER, WORLD_PRESETS
from workbench.models.teacher import load_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = build_world(WORLD_PRESETS["default"]).train
    scorer = load_teacher(DEFAULT_TEACHER).pair_scorer(split)
    scorer(torch.tensor([0]), torch.tensor([0]))  # encode every image and caption once, outside the timing
    gen = torch.Generator().manual_seed(0)
    for n in (100, 500, 2000, 8000):
        img = torch.randint(0, split.num_images, (n,), generator=gen)
        cap = torch.randint(0, split.num_captions, (n,), generator=gen)
        repeats = max(1, 40_000 // n)
        start = time.perf_counter()
        for _ in range(repeats):
            scorer(img, cap)
        seconds = (time.perf_counter() - start) / repeats
        print(f"{n:>5} pairs a request: {n / seconds:,.0f} pairs/s ({args.threads} thread(s))")


if __name__ == "__main__":
    main()
