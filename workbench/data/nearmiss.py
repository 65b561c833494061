"""Pre-generated near-miss captions for a split: for every caption, one false variant per perturbation kind.

Used to train the teacher's binding (positives vs their perturbations) and as privileged hard negatives for the
student's upper-bound control and the NegCLIP-style baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench.data import grammar
from workbench.data.perturbations import TRAINING_PERTURBATIONS, perturb
from workbench.data.world import Split, caption_fact_ids, count_true_facts


@dataclass
class NearMisses:
    """Near-miss captions of a split.

    Attributes:
        tokens: long [M, K, T], K = len(kinds); available: bool [M, K] (False where a kind does not apply);
        fact_ids: long [M, K, W], the near-misses' fact ids (see ``world.caption_fact_ids``), for ground truth.
    """

    tokens: torch.Tensor
    available: torch.Tensor
    fact_ids: torch.Tensor
    kinds: tuple[str, ...]

    def sample_with_kind(
        self, captions: torch.Tensor, generator: torch.Generator, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One random available near-miss per caption: (tokens long [B, T], has_one bool [B], kind long [B]).

        ``weights`` float [K] makes some kinds likelier (default: uniform over the kinds available for a caption).
        """
        avail = self.available[captions].float()  # [B, K]
        if weights is not None:
            avail = avail * weights
        has = avail.sum(1) > 0
        pick = torch.multinomial(avail + (~has[:, None]).float(), 1, generator=generator).squeeze(1)
        return self.tokens[captions, pick], has, pick

    def sample_many(
        self, captions: torch.Tensor, generator: torch.Generator, count: int, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Up to ``count`` available near-misses of distinct kinds per caption (``count=0``: all available).

        Returns:
            (tokens long [P, T], row long [P] index into ``captions``, kind long [P]) for the P picks.
        """
        avail = self.available[captions]  # [B, K]
        if count == 0 or count >= avail.shape[1]:
            row, kind = torch.nonzero(avail, as_tuple=True)
        else:
            w = avail.float() * (1.0 if weights is None else weights)
            # distinct kinds without replacement; tiny mass on unavailable kinds keeps multinomial valid, then drop
            pick = torch.multinomial(w + 1e-12, count, replacement=False, generator=generator)  # [B, count]
            keep = w.gather(1, pick) > 0
            row = torch.arange(len(captions))[:, None].expand_as(pick)[keep]
            kind = pick[keep]
        return self.tokens[captions[row], kind], row, kind

    def sample(
        self, captions: torch.Tensor, generator: torch.Generator, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One random available near-miss per caption: (tokens long [B, T], has_one bool [B])."""
        tokens, has, _ = self.sample_with_kind(captions, generator, weights)
        return tokens, has

    def truth(self, split: Split, img: torch.Tensor, captions: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """bool [q, c]: whether near-miss ``kinds[j]`` of caption ``captions[j]`` is true for image ``img[i]``."""
        ids = self.fact_ids[captions, kinds]  # [c, 3]
        m, r = split.fact_tables
        return count_true_facts(m[img], r[img], ids) == (ids >= 0).sum(-1)


def build_near_misses(split: Split, seed: int = 0, kinds: tuple[str, ...] = TRAINING_PERTURBATIONS) -> NearMisses:
    """One near-miss per (caption, kind), rendered with the same random draws as the true caption's re-rendering."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E4D]))
    texts, specs, available = [], [], torch.zeros(split.num_captions, len(kinds), dtype=torch.bool)
    for c, spec in enumerate(split.captions):
        scene = split.scenes[int(split.caption_image[c])]
        for k, kind in enumerate(kinds):
            new = perturb(scene, spec, kind, rng)
            available[c, k] = new is not None
            specs.append(new if new is not None else spec)
            texts.append(grammar.render(specs[-1], rng))
    shape = (split.num_captions, len(kinds))
    tokens = grammar.tokenize(texts, grammar.token_width(texts)).reshape(*shape, -1)
    return NearMisses(tokens, available, caption_fact_ids(specs).reshape(*shape, -1), kinds)
