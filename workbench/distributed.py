"""Data-parallel training across processes, launched by Hugging Face Accelerate (or ``torchrun``).

    accelerate launch --multi_gpu --num_processes 4 -m workbench train --dataset coco ...      # 4 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m workbench train ... --device cpu       # 2 CPU processes (gloo)

The launcher starts one process per device and sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``;
:func:`init_from_environment` hands them to Accelerate's ``PartialState``, which creates the process group (NCCL
on GPUs, gloo on CPUs) and picks each rank's device. The trainer then talks to the other ranks through a
:class:`Dist`:

- **batches**: every rank draws the same global sample of ``batch x world_size`` pairs (same generator, same
  seed) and keeps its own contiguous slice, so ranks never share an image and the global batch is exactly the one
  a single process with the global batch size would draw;
- **embeddings**: each rank encodes its slice; :meth:`Dist.gather` concatenates all slices *with gradient*: the
  backward pass sums every rank's gradient for each slice (one ``all_reduce``) and hands the owner its part, so
  ITC and mining see the global batch while each rank back-propagates through its own encoder only;
- **parameters**: after ``backward``, :meth:`Dist.average_gradients` averages the gradients (one flat
  ``all_reduce``), which makes the update equal to the single-process update on the global batch (each rank's
  loss is a mean over its own queries, and the global loss is the mean of those means; losses that average over
  slate entries instead of rows, such as ``mse``, ``margin_mse`` and ``ranknet``, are exact only when every rank
  has as many valid entries, as with in-batch hard mining);
- **teacher store**: each rank opens its own connection to the same SQLite file (the store supports concurrent
  writers); **evaluation**: each rank embeds a slice of the split (:meth:`Dist.shard`), :meth:`Dist.gather_rows`
  joins them; **checkpoints**: written by the main process only.

A single process never imports Accelerate: :data:`SINGLE` implements every operation as the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

WORLD_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


@dataclass(frozen=True)
class Dist:
    """This process's place among the data-parallel ranks.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 is the main process (prints, writes checkpoints).
        world_size: number of processes (1 = no distribution: every method is the identity).
        device: this rank's device as chosen by the launcher (``None``: the configured one).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's contiguous slice of ``range(n)`` (sizes differ by at most one; rank 0 gets the larger)."""
        per, extra = divmod(n, self.world_size)
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (self.rank < extra))

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's equal slice of a global batch ``x`` [world_size * B, ...] -> [B, ...]."""
        if not self.enabled:
            return x
        if len(x) % self.world_size:
            raise ValueError(f"a global batch of {len(x)} rows does not split into {self.world_size} equal slices")
        b = len(x) // self.world_size
        return x[self.rank * b : (self.rank + 1) * b]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` [B, ...] (same shape on every rank) in rank order -> [world_size * B, ...].

        Differentiable: the gradient of the result reaching this rank is summed over all ranks and this rank's
        slice flows back into ``x``. Integer tensors (ids) are gathered the same way, without gradient.
        """
        if not self.enabled:
            return x
        if x.requires_grad:
            return _GatherWithGrad.apply(x, self.rank, self.world_size, self._comm_device(x))
        return _all_gather(x, self.world_size, self._comm_device(x))

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` [n_r, ...] (n_r may differ, e.g. :meth:`shard` slices), no gradient."""
        if not self.enabled:
            return x
        device = self._comm_device(x)
        sizes = _all_gather(torch.tensor([len(x)], device=device), self.world_size, device).tolist()
        padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=device)
        padded[: len(x)] = x.detach()
        parts = _all_gather(padded, self.world_size, device).split(max(sizes))
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).to(x.device)

    def average_gradients(self, params) -> None:
        """Average ``.grad`` of ``params`` over the ranks, in place (one flat ``all_reduce``).

        Every rank must pass the same parameters in the same order; a parameter without a gradient on this
        rank contributes zeros and keeps ``grad=None`` here.
        """
        if not self.enabled:
            return
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        device = self._comm_device(params[0])
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(device, torch.float32)
                          for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            if p.grad is not None:
                p.grad.copy_(flat[offset : offset + n].view_as(p))
            offset += n

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (so all ranks start from the same weights)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                device = self._comm_device(tensor)
                data = tensor.detach().to(device)
                torch.distributed.broadcast(data, src=0)
                tensor.copy_(data.to(tensor.device))

    def mean_values(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over the ranks of each logged number (every rank passes the same keys in the same order)."""
        if not self.enabled:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self._comm_device(torch.empty(0)))
        torch.distributed.all_reduce(t)
        return dict(zip(values, (t / self.world_size).tolist(), strict=True))

    def all_equal(self, value: float) -> bool:
        """Whether every rank holds the same float ``value`` (a cheap consistency check for tests and asserts)."""
        if not self.enabled:
            return True
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device(torch.empty(0)))
        lo, hi = t.clone(), t.clone()
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        return bool(lo == hi)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def _comm_device(self, x: torch.Tensor) -> torch.device:
        """Where collectives run: the rank's CUDA device under NCCL, the CPU under gloo."""
        if torch.distributed.get_backend() == "nccl":
            return self.device if self.device is not None and self.device.type == "cuda" else torch.device("cuda")
        return torch.device("cpu")


SINGLE = Dist()
"""One process: every operation is the identity."""


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward: all_reduce (sum) the gradient of the whole result, keep this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, world_size: int, device: torch.device) -> torch.Tensor:
        ctx.rank, ctx.rows, ctx.device, ctx.home = rank, x.shape[0], device, x.device
        return _all_gather(x.detach(), world_size, device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.to(ctx.device, copy=True).contiguous()
        torch.distributed.all_reduce(total)
        mine = total[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows].to(ctx.home)
        return mine, None, None, None


def _all_gather(x: torch.Tensor, world_size: int, device: torch.device) -> torch.Tensor:
    data = x.detach().to(device).contiguous()
    parts = [torch.empty_like(data) for _ in range(world_size)]
    torch.distributed.all_gather(parts, data)
    return torch.cat(parts).to(x.device)


def launched_world_size() -> int:
    """The number of processes a launcher (accelerate launch, torchrun, mpirun) started; 1 without one."""
    for name in WORLD_SIZE_ENV:
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 1


def current() -> Dist:
    """The :class:`Dist` of the initialised process group (:data:`SINGLE` when there is none)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return SINGLE
    rank, size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = _STATE.get("device")
    return Dist(rank, size, device) if size > 1 else SINGLE


_STATE: dict[str, torch.device] = {}


def init_from_environment(device: str = "auto") -> Dist:
    """Join the process group a launcher prepared (through Accelerate's ``PartialState``); :data:`SINGLE`
    without a launcher (Accelerate is then not imported).

    Args:
        device: the run's device setting; ``"cpu"`` (or no CUDA) makes the ranks CPU processes talking over gloo.
    """
    if launched_world_size() <= 1:
        return SINGLE
    if current().enabled:
        return current()
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    _STATE["device"] = torch.device("cpu") if cpu else torch.device(state.device)
    if state.num_processes <= 1 or not torch.distributed.is_initialized():
        raise RuntimeError(
            f"the launcher asked for {launched_world_size()} processes but Accelerate set up "
            f"{state.num_processes} (distributed type {state.distributed_type}); launch with "
            "`accelerate launch --multi_gpu --num_processes N -m workbench ...` (add `--device cpu` on CPUs)"
        )
    return current()


def shutdown(barrier: bool = True) -> None:
    """Leave the process group (call once at the end of a distributed command; ``barrier=False`` after an error,
    when the other ranks may not get there)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if barrier:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
