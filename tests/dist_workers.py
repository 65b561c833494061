"""Run a function in several CPU processes joined by a gloo process group (``torch.multiprocessing.spawn``) and
collect what each rank returns. The workers below are module-level so that spawned processes can import them.

    results = run_ranks(train_steps_worker, 2, world, cfg, steps)   # -> [rank 0's result, rank 1's result]
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workbench.distributed import Dist


def run_ranks(fn, world_size: int, *args):
    """``fn(Dist, *args)`` in ``world_size`` processes; returns each rank's (torch-serialisable) result."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_entry, args=(fn, world_size, _free_port(), tmp, args), nprocs=world_size, join=True)
        return [torch.load(Path(tmp) / f"{rank}.pt", weights_only=False) for rank in range(world_size)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world_size: int, port: int, tmp: str, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.save(fn(Dist(rank, world_size, torch.device("cpu")), *args), Path(tmp) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


class RelevanceTeacher:
    """A stand-in teacher: a monotone function of the world's graded relevance (picklable for spawned ranks)."""

    def __init__(self, split) -> None:
        self.split = split

    def __call__(self, img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = 6.0 * self.split.relevance_pairs(img.cpu(), cap.cpu()) - 3.0
        return logits, torch.sigmoid(logits)


def train_steps(d: Dist, world, cfg, steps: int, student_config) -> dict:
    """``steps`` training steps with the trainer's own ``train_step``; returns the logged rows, the gradients of the
    first step (after averaging; later steps start from weights that differ in rounding) and the final weights."""
    from workbench.models.student import DualEncoder
    from workbench.training.loop import StepContext, build_losses, init_state, train_step

    torch.manual_seed(0)
    student = DualEncoder(student_config)
    state = init_state(cfg, student, torch.device("cpu"), d)
    ctx = StepContext(world, cfg, student, build_losses(cfg), RelevanceTeacher(world.train), None,
                      torch.device("cpu"), d)
    rows = [train_step(state, ctx)]
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    rows += [train_step(state, ctx) for _ in range(steps - 1)]
    params = {n: p.detach().clone() for n, p in student.named_parameters()}
    return {"rows": rows, "grads": grads, "params": params}


def train_steps_worker(d: Dist, world, configs, steps: int, student_config) -> list[dict]:
    return [train_steps(d, world, cfg, steps, student_config) for cfg in configs]


def both_worker(d: Dist, x_global: torch.Tensor, world, configs, steps: int, student_config) -> dict:
    """:func:`primitives_worker` and :func:`train_steps_worker` in one launch (processes take seconds to start)."""
    return {"primitives": primitives_worker(d, x_global, world, student_config),
            "train": train_steps_worker(d, world, configs, steps, student_config)}


def primitives_worker(d: Dist, x_global: torch.Tensor, world, student_config) -> dict:
    """Each primitive of :class:`Dist` on this rank: gather with gradient (through an ITC loss), uneven row
    gathers, shards, averaged gradients, broadcast, sharded embedding and scoring."""
    from workbench.evaluation.embed import embed_split
    from workbench.evaluation.evaluate import sharded_scorer
    from workbench.losses import get_loss
    from workbench.models.student import DualEncoder
    from workbench.training.slates import itc_batch

    out: dict = {}
    b = len(x_global) // d.world_size
    x = x_global[d.rank * b : (d.rank + 1) * b].clone().requires_grad_(True)  # this rank's [B, E] slice
    y = (x_global.flip(0) * 0.5)[d.rank * b : (d.rank + 1) * b].clone().requires_grad_(True)
    all_x, all_y = d.gather(x), d.gather(y)
    ids = torch.arange(d.rank * b, (d.rank + 1) * b)
    positive = ids[:, None] == d.gather(ids)[None, :]  # [B, G]
    itc = get_loss("infonce")
    loss = 0.5 * (itc(itc_batch(10 * x @ all_y.T, positive))["itc_loss"]
                  + itc(itc_batch(10 * y @ all_x.T, positive))["itc_loss"])
    loss.backward()
    out["itc"] = loss.item()
    out["itc_grad"] = (x.grad.clone(), y.grad.clone())
    out["gathered"] = all_x.detach()
    out["rows"] = d.gather_rows(torch.arange(3 * d.rank + 1))  # rank r contributes 3r+1 rows
    out["shard"] = d.shard(7)
    out["mean"] = d.mean_values({"a": float(d.rank), "b": 2.0})
    torch.manual_seed(100 + d.rank)  # different weights on every rank ...
    student = DualEncoder(student_config)
    d.broadcast_parameters(student)  # ... until rank 0's are broadcast
    out["broadcast"] = {n: p.detach().clone() for n, p in student.named_parameters()}
    for p in student.parameters():
        if p.requires_grad:  # the frozen stem has none
            p.grad = torch.full_like(p, float(d.rank + 1))
    d.average_gradients(student.parameters())
    out["averaged"] = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    out["embeddings"] = embed_split(student, world.test, batch=7, dist=d)
    scorer = RelevanceTeacher(world.test)
    img, cap = torch.arange(11) % world.test.num_images, torch.arange(11) * 3
    out["scores"] = sharded_scorer(lambda i, c: scorer(i, c)[0], d)(img, cap)
    return out
