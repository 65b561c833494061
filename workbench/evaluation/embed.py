"""Embedding a whole split with a student: the rows every retrieval metric, mining pool and slate starts from.

Both worlds go through the same code: a student is read through ``encode_images(split, idx, device)`` /
``encode_texts(split, idx, device)`` (the built-in :class:`~workbench.models.student.DualEncoder` indexes the
split's tensors, the `transformers` :class:`~workbench.models.hf.HFStudent` loads images and tokenises captions).
Across processes each rank embeds a contiguous shard of the rows and the shards are gathered.
"""

from __future__ import annotations

import torch

from workbench.device import autocast
from workbench.distributed import Dist, current


@torch.no_grad()
def embed_split_rows(student, split, device: torch.device, *, dist: Dist | None = None, batch: int | None = None,
                     amp: bool = False, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(image embeddings float [N, E], caption embeddings float [M, E]) of a whole split, on ``device``.

    Each rank embeds its :meth:`~workbench.distributed.Dist.shard` of the rows, ``batch`` at a time (default: the
    student's ``embed_batch``), and the shards are gathered. The student's train/eval mode is left as it is.
    """
    dist = current() if dist is None else dist
    batch = batch or getattr(student, "embed_batch", 1024)
    with autocast(device, amp):
        img = _embed_rows(student, student.encode_images, split, split.num_images, device, dist, batch,
                          progress and "student images", _order(student, split, "images"))
        txt = _embed_rows(student, student.encode_texts, split, split.num_captions, device, dist, batch,
                          progress and "student captions", _order(student, split, "texts"))
    return img, txt


def _order(student, split, kind: str) -> torch.Tensor | None:
    """The student's preferred embedding order of a split's rows (``embed_order``), if it has one."""
    order = getattr(student, "embed_order", None)
    return order(split, kind) if order is not None else None


def _embed_rows(student, encode, split, n, device, dist, batch, progress: str | bool,
                order: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``0..n-1`` embedded in chunks of ``batch``, visited in ``order`` (a permutation; default: as they are)
    and returned in row order."""
    if order is not None and dist.enabled:
        order = None  # ranks embed contiguous shards that are gathered in row order
    rows = dist.shard(n)
    chunks = (order if order is not None else torch.arange(rows.start, rows.stop)).split(batch)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=progress, disable=not dist.is_main)
    parts = [encode(split, idx, device).float() for idx in chunks]
    local = torch.cat(parts) if parts else torch.empty(0, student.embed_dim, device=device)
    if order is not None:
        local = torch.empty_like(local).index_copy_(0, order.to(local.device), local)
    return dist.gather_rows(local)


@torch.no_grad()
def embed_split(student, split, batch: int | None = None, *, dist: Dist | None = None,
                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(image embeddings float [N, E], caption embeddings float [M, E]) of a whole split, on the student's device,
    with the student in eval mode.

    ``batch`` rows per call (default: the student's ``embed_batch``); sharded over the ranks when distributed.
    """
    student.eval()
    device = next(student.parameters()).device
    return embed_split_rows(student, split, device, dist=dist, batch=batch, progress=progress)
