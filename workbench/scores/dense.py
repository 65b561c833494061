"""The teacher's scores of every (image, caption) pair of a split, computed once on a device and looked up by index.

On a GPU the built-in teacher scores a whole training split (6,000 x 30,000 = 180M pairs) in seconds to a minute,
and the grid takes 360 MB in bf16: after that a training step's teacher scores are one gather on the device, with
no store misses, no SQLite and no host round trip. :class:`DenseTeacherScores` has the call contract of
:class:`~workbench.scores.teacher_scores.TeacherScores` (``(img [P], cap [P]) -> (logits [P], probs [P])``) and a
``stats`` of the same kind, so the trainer cannot tell them apart. On a CPU the grid would take hours (the built-in
teacher scores ~7,000-9,000 pairs/s on one core), so the store stays the default there.

Every build scores every pair in the same chunk, so the grid is the same whichever process builds it (on one kind of
device); its values are the teacher's ITM logits rounded to ``dtype``
(bf16: 8 significant bits, a relative error of at most 2**-8 = 0.4 %; float16: 11 bits, at most 2**-11). Captions are
processed trimmed to their length (padding tokens are masked keys, so the fused [CLS] state, hence the score, is the
same function of the pair as with padding; a third fewer fusion FLOPs on the built-in world).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from workbench.checks import check_int
from workbench.data.grammar import PAD
from workbench.scores.store import StoreStats


@dataclass(frozen=True)
class DenseInfo:
    """What building the grid took: pairs scored, seconds, bytes held on the device."""

    pairs: int
    seconds: float
    bytes: int
    device: str
    dtype: str


class DenseTeacherScores:
    """``scores(img [P], cap [P]) -> (logits [P], probs [P])`` by lookup in the split's full grid of teacher logits.

    Args:
        teacher: the built-in :class:`~workbench.models.teacher.CrossEncoder` (its ``encode_image``,
            ``encode_text``, ``itm``), frozen; it is moved to ``device``.
        split: a built-in split (``images``, ``tokens``).
        device: where the teacher runs and the grid lives (default: the teacher's device).
        dtype: the grid's dtype (bf16 by default; float32 keeps the teacher's values exactly).
        chunk: pairs per fusion call (default: 16,384 on a GPU, 256 on a CPU, where small chunks stay in cache).
        image_block: images whose rows are scored together (bounds the index tensors).
        progress: show a progress bar while building.

    The grid is built on the first call (or :meth:`build`).
    """

    def __init__(self, teacher: Any, split: Any, *, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.bfloat16, chunk: int | None = None, image_block: int = 64,
                 progress: bool = False):
        self.teacher = teacher.eval().requires_grad_(False)
        self.device = torch.device(device) if device is not None else next(teacher.parameters()).device
        self.teacher.to(self.device)
        self.split, self.dtype, self.progress = split, dtype, progress
        self.chunk = check_int("chunk", chunk or (256 if self.device.type == "cpu" else 16384), min_value=1)
        self.image_block = check_int("image_block", image_block, min_value=1)
        self.grid: torch.Tensor | None = None  # [N, M] logits, dtype, on device
        self.info: DenseInfo | None = None
        self._requested = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.split.num_images, self.split.num_captions

    def memory_bytes(self) -> int:
        """Bytes the grid takes (before it is built too)."""
        return self.shape[0] * self.shape[1] * torch.empty(0, dtype=self.dtype).element_size()

    @torch.no_grad()
    def build(self) -> DenseInfo:
        """Score every pair of the split once (idempotent).

        Per block of images, pairs run caption-major with captions sorted by length, so each chunk holds captions
        of (nearly) one length and is trimmed to its longest; chunk boundaries and lengths are fixed by the split,
        so every build computes every pair the same way.
        """
        if self.grid is not None:
            return self.info
        start = time.perf_counter()
        t = self.teacher
        n, m = self.shape
        cached = t.can_cache_fusion  # one-sided parts cached, the last layer on [CLS] only (models/cached_fusion)
        img_enc = torch.cat([t.image_side(x.to(self.device), cached) for x in self.split.images.split(1024)])
        parts = [t.caption_side(x.to(self.device), cached) for x in self.split.tokens.split(1024)]
        txt, pad = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        lengths = (self.split.tokens != PAD).sum(1)
        order = torch.sort(lengths, stable=True).indices  # captions by length (CPU)
        sorted_len = lengths[order].tolist()
        order_d = order.to(self.device)
        grid = torch.empty(n, m, dtype=self.dtype, device=self.device)
        blocks = range(0, n, self.image_block)
        if self.progress:
            from tqdm.auto import tqdm

            blocks = tqdm(blocks, desc="dense teacher", unit="block")
        for i0 in blocks:
            rows = torch.arange(i0, min(n, i0 + self.image_block), device=self.device)
            r = len(rows)
            img = rows[None, :].expand(m, r).reshape(-1)  # caption-major: [caption 0 x every image, caption 1 ...]
            cap = order_d[:, None].expand(m, r).reshape(-1)
            for c0 in range(0, m * r, self.chunk):
                c1 = min(m * r, c0 + self.chunk)
                length = sorted_len[(c1 - 1) // r]  # the longest caption of the chunk (sorted ascending)
                i, c = img[c0:c1], cap[c0:c1]
                logits = t.itm_sides(img_enc[i], txt[c, :length], pad[c, :length], cached).float()
                grid[i, c] = logits.to(self.dtype)
        self.grid = grid
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.info = DenseInfo(n * m, time.perf_counter() - start, grid.numel() * grid.element_size(),
                              str(self.device), str(self.dtype).removeprefix("torch."))
        return self.info

    def __call__(self, img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.grid is None:
            self.build()
        logits = self.grid[img.to(self.device), cap.to(self.device)].float()
        self._requested += len(img)
        logits = logits.to(img.device)
        return logits, torch.sigmoid(logits)

    @property
    def stats(self) -> StoreStats:
        """Store-like counters: every request is a hit; ``computed_pairs`` = the grid, scored once."""
        built = self.info
        return StoreStats(hits=self._requested, computed_pairs=built.pairs if built else 0,
                          teacher_calls=1 if built else 0, seconds_compute=built.seconds if built else 0.0)

    def flush(self) -> None:
        """Nothing to write (the store contract)."""

    def close(self) -> None:
        """Free the grid."""
        self.grid = None
