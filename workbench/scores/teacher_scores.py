"""Teacher scores for (image, caption) pairs of a split, through the persistent store.

Only store misses reach the teacher (in batches, under ``no_grad``, teacher in eval mode); the teacher's image and
caption encodings are cached by :class:`~workbench.models.teacher.PairScorer`, so each miss runs only the fusion.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.data.world import Split
from workbench.models.teacher import CrossEncoder, PairScorer
from workbench.scores.fingerprint import fingerprint_module
from workbench.scores.store import StoreStats, TeacherScoreStore


class TeacherScores:
    """``scores(img [P], cap [P]) -> (logits [P], probs [P])`` for split indices, cached on disk.

    Args:
        teacher: the frozen cross-encoder.
        split: the split whose indices are asked for (its global ids key the store).
        store_path: the SQLite store; ``None`` keeps scores only in this process (an in-memory store).
        namespace: the store's id space (the world's seed makes ids of different worlds distinct).
    """

    def __init__(self, teacher: CrossEncoder, split: Split, store_path: str | Path | None, namespace: str,
                 batch: int = 2048):
        teacher.eval().requires_grad_(False)
        self.split, self.scorer = split, PairScorer(teacher, split.images, split.tokens, batch)
        self.fingerprint = fingerprint_module(teacher, teacher.config_dict())
        self.store = TeacherScoreStore(store_path or ":memory:", self.fingerprint, namespace)

    def __call__(self, img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img_ids, cap_ids = self.split.image_ids[img.cpu()], self.split.caption_ids[cap.cpu()]
        logits, probs = self.store.get_or_compute(img_ids, cap_ids, self._compute, batch_size=self.scorer.batch)
        return logits.to(img.device), probs.to(img.device)

    def _compute(self, img_ids: torch.Tensor, cap_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.scorer(self.split.image_index(img_ids), self.split.caption_index(cap_ids))
        return logits, torch.sigmoid(logits)

    @property
    def stats(self) -> StoreStats:
        return self.store.stats

    def close(self) -> None:
        self.store.close()
