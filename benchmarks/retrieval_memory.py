"""Peak memory of blocked retrieval evaluation vs the dense score matrix it avoids.

Evaluates N images x M captions (default 5,000 x 25,000, D = 256, the MSCOCO 5k test split) with
``retrieval_metrics`` (two protocols, one blocked top-k per direction) and, side by side, with the leanest dense
path (``image_emb @ text_emb.T``, ``torch.topk`` per direction, then ``recall_from_topk``). Each measurement runs
in a fresh subprocess and
reports its peak memory above the moment after its inputs were built:

- CPU: the process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``).
- CUDA: ``torch.cuda.max_memory_allocated`` above the inputs.

Prints each peak, its ratio to the size of the dense float32 matrix (N x M x 4 bytes = 500 MB by default),
the blocked/dense ratios, wall times, and whether both paths gave the same metrics.

    PYTHONPATH=. python benchmarks/retrieval_memory.py                 # CPU, 5k x 25k
    PYTHONPATH=. python benchmarks/retrieval_memory.py --device cuda
    PYTHONPATH=. python benchmarks/retrieval_memory.py --images 500 --captions 2500   # quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from workbench.data.relations import ImageIdRelation, PairRelation
from workbench.evaluation.retrieval import recall_from_topk, retrieval_metrics


class NeighbourRelation(PairRelation):
    """A cheap stand-in for a semantic relation: caption c is true for its image and for the next one."""

    def __init__(self, caption_image: torch.Tensor, num_images: int):
        self.caption_image, self.num_images, self.num_captions = caption_image, num_images, caption_image.numel()

    def pairs(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        own = self.caption_image.to(cap.device)[cap]
        return (img == own) | (img == (own + 1) % self.num_images)


def build_inputs(args: argparse.Namespace):
    """Embeddings where each caption is a noisy copy of its image (so recalls are neither 0 nor 100)."""
    g = torch.Generator().manual_seed(0)
    image_emb = torch.nn.functional.normalize(torch.randn(args.images, args.dim, generator=g), dim=1)
    caption_image = torch.arange(args.captions) % args.images
    noise = torch.randn(args.captions, args.dim, generator=g) * args.noise
    text_emb = torch.nn.functional.normalize(image_emb[caption_image] + noise, dim=1)
    relations = {"coco": ImageIdRelation(caption_image, args.images), "semantic": NeighbourRelation(
        caption_image, args.images)}
    device = torch.device(args.device)
    return image_emb.to(device), text_emb.to(device), relations


def run_dense(image_emb, text_emb, relations, ks=(1, 5, 10)):
    """The path blocking avoids, at its leanest: the whole N x M matrix, then ``torch.topk`` per direction."""
    scores = image_emb @ text_emb.T  # [N, M], the 500 MB matrix
    ranked = {"i2t": scores.topk(max(ks), dim=1).indices, "t2i": scores.T.topk(max(ks), dim=1).indices}
    del scores
    out = {}
    for name, relation in relations.items():
        metrics = {}
        for direction, idx in ranked.items():
            metrics.update(recall_from_topk(idx, direction, relation, ks))
        out[name] = {**metrics, "rsum": sum(metrics.values())}
    return out


def measure(args: argparse.Namespace) -> dict:
    """Child process: build inputs, reset the peak, run one path, report peak bytes above the inputs."""
    image_emb, text_emb, relations = build_inputs(args)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _reset_peak_rss()
    t0 = time.perf_counter()
    if args.measure == "blocked":
        out = retrieval_metrics(image_emb, text_emb, relations, query_block=args.query_block,
                                gallery_block=args.gallery_block)
    else:
        out = run_dense(image_emb, text_emb, relations)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base if cuda else _peak_rss() - base
    return {"peak_bytes": peak, "seconds": seconds, "metrics": out}


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter to the current RSS; return that RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS") * 1024


def _peak_rss() -> int:
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status (this benchmark needs Linux on CPU)")


def child(args: argparse.Namespace, path: str) -> dict:
    """Run one measurement in a fresh interpreter so the peaks do not contaminate each other."""
    argv = [sys.executable, __file__, "--measure", path] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("measure", "skip_dense")
    ]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions", type=int, default=25000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--noise", type=float, default=1.2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--query-block", type=int, default=256)
    parser.add_argument("--gallery-block", type=int, default=8192)
    parser.add_argument("--skip-dense", action="store_true", help="measure only the blocked path")
    parser.add_argument("--measure", choices=["blocked", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return
    dense_bytes = args.images * args.captions * 4
    print(f"N={args.images} images x M={args.captions} captions, D={args.dim}, device={args.device}, "
          f"blocks {args.query_block} x {args.gallery_block}; dense float32 matrix = {dense_bytes / 1e6:.0f} MB")
    results = {path: child(args, path) for path in (["blocked"] if args.skip_dense else ["blocked", "dense"])}
    for path, r in results.items():
        print(f"{path:>8}: peak +{r['peak_bytes'] / 1e6:8.1f} MB = {r['peak_bytes'] / dense_bytes:6.3f} x dense "
              f"matrix, {r['seconds']:6.1f} s, coco rsum {r['metrics']['coco']['rsum']:.2f}, "
              f"semantic rsum {r['metrics']['semantic']['rsum']:.2f}")
    if "dense" in results:
        b, d = results["blocked"], results["dense"]
        print(f"blocked / dense: peak memory {b['peak_bytes'] / d['peak_bytes']:.3f}, "
              f"time {b['seconds'] / d['seconds']:.2f}; same metrics: {_same(b['metrics'], d['metrics'])}")


def _same(a: dict, b: dict) -> bool:
    return all(abs(a[p][k] - b[p][k]) < 1e-9 for p in a for k in a[p])


if __name__ == "__main__":
    main()
