"""Many students of one architecture as stacked weights, run with ``torch.vmap`` of ``torch.func.functional_call``.

Generic over the student: nothing here knows its layers. A method of the student (``encode_images``,
``encode_texts``, ``encode_text``, the ``logit_scale`` property) runs for all members at once, each with its own
weights: one batched matmul per layer instead of M small ones. Frozen parameters and buffers equal in every member
(the shared stem) are kept once and broadcast. Layers must be ``vmap``-friendly (the built-in
:class:`~workbench.models.layers.Attention` is; ``nn.MultiheadAttention``'s fused kernels are not).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap


class _Call(nn.Module):
    """Calls a method of the wrapped student, so ``functional_call`` can run any of them with swapped weights."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, method: str, *args: Any) -> Any:
        if method == "logit_scale":
            return self.student.logit_scale
        return getattr(self.student, method)(*args)


class StackedStudents:
    """M students of one architecture as stacked tensors, run with ``vmap(functional_call(...))``.

    ``params[name]`` float [M, ...] (trainable ones require grad), ``shared[name]``: frozen parameters and buffers
    equal in every member, kept once. :meth:`copy_to` writes member ``i``'s weights into a module.
    """

    def __init__(self, students: Sequence[nn.Module], device: torch.device):
        self.template = _Call(copy.deepcopy(students[0])).to(device)
        self.size = len(students)
        named = [dict(s.named_parameters()) | dict(s.named_buffers()) for s in students]
        trainable = {n for n, p in students[0].named_parameters() if p.requires_grad}
        self.params: dict[str, torch.Tensor] = {}
        self.shared: dict[str, torch.Tensor] = {}
        for name, first in named[0].items():
            key = f"student.{name}"
            if name not in trainable and all(torch.equal(first, d[name]) for d in named[1:]):
                self.shared[key] = first.detach().to(device)
                continue
            stacked = torch.stack([d[name].detach() for d in named]).to(device)
            self.params[key] = stacked.requires_grad_(name in trainable)
        self.trainable = [k for k in self.params if self.params[k].requires_grad]
        order = [f"student.{n}" for n, p in students[0].named_parameters() if p.requires_grad]
        self.trainable.sort(key=order.index)  # the order of the student's own parameters (its optimiser's order)

    def call(self, method: str, *args: Any, in_dims: tuple = (), subset: torch.Tensor | None = None) -> Any:
        """``vmap`` of ``student.<method>(*args)`` over the members (or the members in ``subset``); ``in_dims``:
        one entry per argument (0 = batched over members, None = the same for all)."""
        params = self.params if subset is None else {k: v[subset] for k, v in self.params.items()}

        def one(p: dict[str, torch.Tensor], *a: Any) -> Any:
            return functional_call(self.template, {**p, **self.shared}, (method, *a))

        return vmap(one, in_dims=(0, *in_dims), randomness="different")(params, *args)

    @torch.no_grad()
    def copy_to(self, i: int, module: nn.Module) -> None:
        """Write member ``i``'s weights into ``module`` (the student it started from)."""
        own = dict(module.named_parameters()) | dict(module.named_buffers())
        for key, value in self.params.items():
            own[key.removeprefix("student.")].copy_(value[i])
        for key, value in self.shared.items():
            own[key.removeprefix("student.")].copy_(value)

    def call_one(self, i: int, method: str, *args: Any) -> Any:
        """``student.<method>(*args)`` with member ``i``'s weights alone (no vmap: the single model's arithmetic,
        for work that is large enough per member, such as embedding a whole split)."""
        params = {k: v[i] for k, v in self.params.items()}
        return functional_call(self.template, {**params, **self.shared}, (method, *args))


class MemberView:
    """Member ``i`` of a stack seen as a student (its methods run with its weights alone)."""

    def __init__(self, stack: StackedStudents, i: int):
        self.stack, self.i = stack, i
        student = stack.template.student
        self.embed_dim = student.embed_dim
        self.embed_batch = getattr(student, "embed_batch", 1024)
        self.embed_order = getattr(student, "embed_order", None)

    def encode_images(self, split, idx, device):
        return self.stack.call_one(self.i, "encode_images", split, idx, device)

    def encode_texts(self, split, idx, device):
        return self.stack.call_one(self.i, "encode_texts", split, idx, device)


def member_optimizer_state(state: dict, i: int, n_params: int) -> dict:
    """Member ``i``'s slice of a stacked optimiser's ``state_dict`` (every per-parameter tensor ``[M, ...]`` ->
    ``[...]``; scalar step counters kept), loadable into an optimiser over that member's ``n_params`` parameters."""
    sliced = {}
    for j in range(n_params):
        entry = state["state"].get(j)
        if entry is not None:
            sliced[j] = {k: (v[i].clone() if k != "step" and v.dim() > 0 else v.clone()) for k, v in entry.items()}
    group = {k: v for k, v in state["param_groups"][0].items() if k != "params"}
    return {"state": sliced, "param_groups": [group | {"params": list(range(n_params))}]}
