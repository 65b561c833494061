"""Teacher-score store speed: warm lookups, SQLite-only vs cached, and the hit rate of a repeated run.

Training looks up ~2,000 (image, caption) pairs per step; a warm lookup must cost well under 1 ms per 1,000 pairs.
Both stores read the same file and are timed side by side, interleaved, in one run (median over repeats).

    PYTHONPATH=. python benchmarks/store.py                 # 200,000 stored pairs, 2,000-pair requests
    PYTHONPATH=. python benchmarks/store.py --stored 20000 --repeats 20   # a quick run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from workbench.scores.store import TeacherScoreStore


def fake_teacher(img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in teacher (the benchmark measures the store, not a model)."""
    logit = ((img * 37 + cap * 91) % 1000).double() / 100.0 - 5.0
    return logit, torch.sigmoid(logit)


def _random_pairs(n: int, g: torch.Generator, images: int = 20_000, captions: int = 100_000):
    return torch.randint(0, images, (n,), generator=g), torch.randint(0, captions, (n,), generator=g)


def _fill(path: Path, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    img, cap = _random_pairs(n, g)
    start = time.perf_counter()
    with TeacherScoreStore(path, "bench-teacher", "bench") as store:
        store.get_or_compute(img, cap, fake_teacher, batch_size=10_000)
    return img, cap, time.perf_counter() - start


def _time_lookups(stores: dict[str, TeacherScoreStore], img, cap, request: int, repeats: int, g) -> dict:
    """Median seconds per request for each store, interleaved on identical requests."""
    times: dict[str, list[float]] = {name: [] for name in stores}
    for _ in range(repeats):
        pick = torch.randint(0, img.numel(), (request,), generator=g)
        for name, store in stores.items():
            start = time.perf_counter()
            found, _, _ = store.lookup(img[pick], cap[pick])
            times[name].append(time.perf_counter() - start)
            assert found.all()
    return {name: statistics.median(t) for name, t in times.items()}


def _repeated_run_hit_rate(path: Path, steps: int, request: int, g: torch.Generator) -> tuple[float, float, int]:
    """A 'training run' of mined pairs done twice (two store objects, like two runs): hit rates and 2nd-run calls."""
    batches = [_random_pairs(request, g, images=5_000, captions=25_000) for _ in range(steps)]
    rates = []
    for _ in range(2):
        with TeacherScoreStore(path, "run-teacher", "bench") as store:
            for img, cap in batches:
                store.get_or_compute(img, cap, fake_teacher)
            rates.append((store.stats.hit_rate, store.stats.teacher_calls))
    return rates[0][0], rates[1][0], rates[1][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=200_000, help="pairs in the store")
    parser.add_argument("--request", type=int, default=2_000, help="pairs per lookup (one training step)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100, help="steps of the repeated run")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scores.sqlite"
        img, cap, fill_s = _fill(path, args.stored, g)
        stores = {"sqlite": TeacherScoreStore(path, "bench-teacher", "bench", cache=False),
                  "cached": TeacherScoreStore(path, "bench-teacher", "bench")}
        start = time.perf_counter()
        stores["cached"].lookup(img[:1], cap[:1])  # lazy cache load
        load_s = time.perf_counter() - start
        med = _time_lookups(stores, img, cap, args.request, args.repeats, g)
        for store in stores.values():
            store.close()
        first, second, calls = _repeated_run_hit_rate(Path(folder) / "run.sqlite", args.steps, args.request, g)
    per_k = {name: 1000 * s / args.request * 1000 for name, s in med.items()}  # ms per 1,000 pairs
    stored = len(torch.unique(img * 2**32 + cap))
    print(f"store of {stored:,} distinct pairs: filled at {args.stored / fill_s:,.0f} pairs/s; "
          f"cache load {load_s * 1000:.0f} ms; torch threads {torch.get_num_threads()}")
    print(f"warm lookup of {args.request:,} pairs, median of {args.repeats}, per 1,000 pairs: "
          f"SQLite-only {per_k['sqlite']:.3f} ms, cached {per_k['cached']:.3f} ms "
          f"-> cached is {per_k['sqlite'] / per_k['cached']:.1f}x faster; "
          f"target < 1 ms: {'met' if per_k['cached'] < 1 else 'MISSED'}")
    print(f"repeated run ({args.steps} steps x {args.request:,} mined pairs): hit rate first run {100 * first:.1f}%, "
          f"second run {100 * second:.2f}% (target >= 99%: {'met' if second >= 0.99 else 'MISSED'}), "
          f"teacher calls in the second run: {calls}")


if __name__ == "__main__":
    main()
