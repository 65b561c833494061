"""Minimal-pair accuracy: does a model score an image's true caption above a near-miss of it?

For each perturbation kind (swap colours, swap shapes, flip the relation, change one attribute) the accuracy is
the fraction of pairs where score(image, true) > score(image, near-miss); 50% is chance, and the three
word-preserving kinds (swaps and flips) cannot be beaten by a bag-of-words model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from workbench.data.perturbations import MinimalPairs

PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``scorer(image_idx long [P], tokens long [P, T]) -> float [P]``."""


@torch.no_grad()
def minimal_pair_accuracy(scorer: PairScorer, pairs: MinimalPairs, batch: int = 1024) -> dict[str, float]:
    """Accuracy in percent per kind, plus ``"mean"`` over kinds (ties count half)."""
    wins = []
    for i in range(0, len(pairs.kind), batch):
        img = pairs.image[i : i + batch]
        s_true = scorer(img, pairs.tokens_true[i : i + batch])
        s_false = scorer(img, pairs.tokens_false[i : i + batch])
        wins.append((s_true > s_false).float() + 0.5 * (s_true == s_false).float())
    wins = torch.cat(wins)
    out = {}
    for kind in dict.fromkeys(pairs.kind):
        mask = torch.tensor([k == kind for k in pairs.kind])
        out[kind] = 100 * wins[mask].mean().item()
    out["mean"] = sum(out.values()) / len(out)
    return out
