"""Teacher scores for (image, caption) pairs of a split, through the persistent store.

Only store misses reach the teacher (in batches, under ``no_grad``, teacher in eval mode); the teacher's own pair
scorer (``teacher.pair_scorer(split)``) caches image (and caption) encodings, so each miss runs only the fusion.
Works for both worlds: the built-in :class:`~workbench.models.teacher.CrossEncoder` on a built-in split, and the
`transformers` :class:`~workbench.models.hf.HFTeacher` (BLIP ITM) on a Karpathy split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workbench.scores.fingerprint import fingerprint_module
from workbench.scores.store import StoreStats, TeacherScoreStore


def teacher_fingerprint(teacher: Any) -> str:
    """The store fingerprint of a teacher: its weights (``teacher`` itself when it is a module, else its
    ``model``) and its ``fingerprint_config()``."""
    weights = teacher if isinstance(teacher, torch.nn.Module) else teacher.model
    return fingerprint_module(weights, teacher.fingerprint_config())


class TeacherScores:
    """``scores(img [P], cap [P]) -> (logits [P], probs [P])`` for split indices, cached on disk.

    Args:
        teacher: the frozen cross-encoder (anything with ``pair_scorer(split)`` and ``fingerprint_config()``).
        split: the split whose indices are asked for (its global ids key the store).
        store_path: the SQLite store; ``None`` keeps scores only in this process (an in-memory store). Several
            processes (data-parallel ranks) may open the same file.
        namespace: the store's id space (the world's seed makes ids of different worlds distinct; a dataset
            name for real data).
        batch: pairs per teacher call (default: the pair scorer's own).
        scorer_kwargs: further options of the teacher's pair scorer (e.g. ``max_cached_images`` for BLIP).
    """

    def __init__(self, teacher: Any, split: Any, store_path: str | Path | None, namespace: str,
                 batch: int | None = None, **scorer_kwargs: Any):
        _freeze(teacher)
        if batch is not None:
            scorer_kwargs["batch"] = batch
        self.split, self.scorer = split, teacher.pair_scorer(split, **scorer_kwargs)
        self.fingerprint = teacher_fingerprint(teacher)
        self.store = TeacherScoreStore(store_path or ":memory:", self.fingerprint, namespace)

    def __call__(self, img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img_ids, cap_ids = self.split.image_ids[img.cpu()], self.split.caption_ids[cap.cpu()]
        logits, probs = self.store.get_or_compute(img_ids, cap_ids, self._compute, batch_size=self.scorer.batch)
        return logits.to(img.device), probs.to(img.device)

    def _compute(self, img_ids: torch.Tensor, cap_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.scorer(self.split.image_index(img_ids), self.split.caption_index(cap_ids))
        return logits, torch.sigmoid(logits)

    def stored(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """bool [P]: which pairs (split indices) the store already holds (no teacher call)."""
        img_ids, cap_ids = self.split.image_ids[img.cpu()], self.split.caption_ids[cap.cpu()]
        return self.store.lookup(img_ids, cap_ids)[0]

    @property
    def stats(self) -> StoreStats:
        return self.store.stats

    def flush(self) -> None:
        """Write the scores computed and still pending to the store file (see ``TeacherScoreStore.write_every``)."""
        self.store.flush()

    def close(self) -> None:
        self.store.close()


def _freeze(teacher: Any) -> None:
    if isinstance(teacher, torch.nn.Module):
        teacher.eval().requires_grad_(False)
