"""Peak memory of blocked hard-negative mining (target: <= 1 GB for 20,000 x 100,000, D=256; dense = 8 GB).

Two child processes run side by side in one invocation: a baseline that only imports torch and allocates the
inputs (embeddings and the image-id relation), and one that also mines. Peak extra memory = the mining child's
peak RSS minus the baseline's. A smaller case checks that blocked mining equals a dense stable sort exactly
(embeddings quantised to multiples of 1/8, so every dot product is exact and ties abound).

    PYTHONPATH=. python benchmarks/mining_memory.py                              # the full 20,000 x 100,000 case
    PYTHONPATH=. python benchmarks/mining_memory.py --queries 2000 --candidates 10000   # a quick run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from workbench.data.relations import ImageIdRelation
from workbench.scores.mining import mine_hard_negatives, relation_exclude

TARGET_BYTES = 1 << 30


def _inputs(queries: int, candidates: int, dim: int, seed: int = 0):
    """Image queries [Q, D], caption candidates [C, D] (unit norm), and captions' images (C / Q captions each)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(queries, dim, generator=g), dim=1)
    captions = torch.nn.functional.normalize(torch.randn(candidates, dim, generator=g), dim=1)
    relation = ImageIdRelation(torch.arange(candidates) * queries // candidates, queries)
    return images, captions, relation


def _child(mode: str, args: argparse.Namespace) -> None:
    images, captions, relation = _inputs(args.queries, args.candidates, args.dim)
    seconds = 0.0
    if mode == "mine":
        start = time.perf_counter()
        mined = mine_hard_negatives(images, captions, args.k, positives=relation_exclude(relation, "i2t"), scale=100.0)
        seconds = time.perf_counter() - start
        assert mined.valid.all()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(json.dumps({"peak_bytes": peak_kb * 1024, "seconds": seconds}))


def _run_child(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--queries", str(args.queries),
           "--candidates", str(args.candidates), "--dim", str(args.dim), "--k", str(args.k)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_blocked_equals_dense(queries: int = 700, candidates: int = 3000, dim: int = 16, k: int = 20) -> bool:
    images, captions, relation = _inputs(queries, candidates, dim, seed=1)
    images, captions = (torch.round(x * 8) / 8 for x in (images, captions))  # exact dot products, many ties
    exclude = relation_exclude(relation, "i2t")
    blocked = mine_hard_negatives(images, captions, k, positives=exclude, query_block=61, gallery_block=257)
    dense = (images @ captions.T).masked_fill(relation.dense(), float("-inf"))
    values, indices = torch.sort(dense, dim=1, descending=True, stable=True)
    return torch.equal(blocked.indices, indices[:, :k]) and torch.equal(blocked.scores, values[:, :k])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--child", choices=["baseline", "mine"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args)
        return
    exact = _check_blocked_equals_dense()
    base, mine = _run_child("baseline", args), _run_child("mine", args)
    extra = mine["peak_bytes"] - base["peak_bytes"]
    dense = args.queries * args.candidates * 4
    print(f"mining {args.queries:,} x {args.candidates:,}, D={args.dim}, k={args.k}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"  blocked == dense stable sort (700 x 3,000, ties, odd blocks): {exact}")
    print(f"  peak RSS baseline (inputs only): {base['peak_bytes'] / 2**20:,.0f} MiB; "
          f"mining: {mine['peak_bytes'] / 2**20:,.0f} MiB")
    print(f"  peak extra memory of mining: {extra / 2**20:,.0f} MiB = {extra / TARGET_BYTES:.3f} x the 1 GiB target "
          f"({'met' if extra <= TARGET_BYTES else 'MISSED'}); a dense float32 score matrix would be "
          f"{dense / 2**30:.1f} GiB ({dense / max(extra, 1):.0f}x more)")
    print(f"  mining time: {mine['seconds']:.1f} s")


if __name__ == "__main__":
    main()
