"""Loss speed: forward + backward time of each loss relative to ``infonce`` on the same slates, in one run.

    PYTHONPATH=. python benchmarks/losses.py [--batch 256] [--slate 64] [--device cpu|cuda] [--threads N]

Target (issue 3): ``cprd`` forward+backward at most 2x ``infonce`` at B=256, L=64. Slates look like mined ones:
one positive (column 0), ``L - 1`` hard negatives, teacher scores concentrated near 0 with a few high ones (so the
threshold rule keeps a handful of valid negatives), about 5% padding.

CPU timings default to one thread: at 256 x 64 intra-op threads do not pay, and on a small shared machine they make
every timing hostage to the other processes' load (``--threads 0`` uses torch's default).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from workbench.losses import ScoreBatch, get_loss

TARGET = 2.0
CONTEXT = [("listmle", {}), ("ranknet", {}), ("cprd", {"validity": "top", "m": 8}), ("kl", {})]


def make_slates(B: int, L: int, device: torch.device, seed: int = 0) -> ScoreBatch:
    """Random mined-looking slates: student logits ~ 20 * cosine, teacher ITM probabilities mostly near 0."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(B, L, generator=g) * 0.6 + 0.1) * 20
    u = torch.sigmoid(torch.randn(B, L, generator=g) * 2 - 3)
    positive = torch.zeros(B, L, dtype=torch.bool)
    positive[:, 0] = True
    valid = torch.rand(B, L, generator=g) > 0.05
    valid[:, 0] = True
    s = s.to(device).requires_grad_(True)
    return ScoreBatch(student=s, teacher=u.to(device), positive=positive.to(device), mask=valid.to(device))


def time_loss(loss, batch: ScoreBatch, repeat: int, warmup: int) -> float:
    """Median seconds of one forward + backward."""
    sync = torch.cuda.synchronize if batch.student.is_cuda else (lambda: None)
    times = []
    for i in range(warmup + repeat):
        batch.student.grad = None
        sync()
        start = time.perf_counter()
        sum(loss(batch).values()).backward()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Time the losses side by side and print ratios to ``infonce``; exit 1 if cprd misses the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--slate", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = make_slates(args.batch, args.slate, torch.device(args.device))
    losses = [get_loss("infonce"), get_loss("cprd")] + [get_loss(n, **kw) for n, kw in CONTEXT]
    # interleave rounds so drift (thermal, other load) hits every loss alike
    rounds = [[time_loss(loss, batch, args.repeat // 5, args.warmup) for loss in losses] for _ in range(5)]
    median = [statistics.median(r[i] for r in rounds) for i in range(len(losses))]
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"B={args.batch} L={args.slate} forward+backward, median of {args.repeat} in 5 interleaved rounds")
    base = median[0]
    for loss, t in zip(losses, median, strict=True):
        print(f"  {loss!r:<80} {t * 1e6:9.1f} us   x{t / base:5.2f} infonce")
    ratio = median[1] / base
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"cprd / infonce = {ratio:.2f}  (target <= {TARGET}): {verdict}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
