"""Sampling training batches from a split: images with one of their own captions, plus truth masks."""

from __future__ import annotations

import torch

from workbench.data.nearmiss import NearMisses
from workbench.data.world import Split


def own_captions(split: Split, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """long [B]: a uniformly random caption written for each image index in ``img`` [B]."""
    starts = torch.searchsorted(split.caption_image, img)
    ends = torch.searchsorted(split.caption_image, img, right=True)
    return starts + (torch.rand(len(img), generator=gen) * (ends - starts)).long()


def sample_pairs(split: Split, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(image indices long [B] without repeats, one own caption each long [B])."""
    img = torch.randperm(split.num_images, generator=gen)[:batch]
    return img, own_captions(split, img, gen)


def sample_group_pairs(split: Split, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`sample_pairs`, but whole contrast groups (``split.groups``): every image comes with its siblings
    (same objects, other arrangements) while the batch has room. A privileged batch composition (an oracle's)."""
    if split.groups is None:
        return sample_pairs(split, batch, gen)
    order = torch.randperm(int(split.groups.max()) + 1, generator=gen)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    img = torch.argsort(rank[split.groups] * split.num_images + torch.arange(split.num_images))[:batch]
    return img, own_captions(split, img, gen)


def sample_batch(split: Split, batch: int, gen: torch.Generator, group_batches: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch a config asks for: :func:`sample_group_pairs` with ``group_batches``, else
    :func:`sample_pairs` (both return image indices long [B] and one own caption each long [B])."""
    return (sample_group_pairs if group_batches else sample_pairs)(split, batch, gen)


def near_miss_columns(
    split: Split, near: NearMisses, img: torch.Tensor, cap: torch.Tensor, gen: torch.Generator,
    count: int = 1, flip_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Privileged hard negatives: near-misses of each batch caption, and their truth against every batch image.

    ``count=1, flip_weight=1`` (the default) draws one near-miss per caption, uniformly over its available kinds.
    ``count`` > 1 draws that many distinct kinds per caption (0: every available kind); ``flip_weight`` scales the
    chance of drawing ``flip_relation``.

    Returns:
        (tokens long [B', T] of the near-misses drawn, truth bool [B, B'] vs the batch images).
    """
    weights = None
    if flip_weight != 1.0 and "flip_relation" in near.kinds:
        weights = torch.ones(len(near.kinds))
        weights[near.kinds.index("flip_relation")] = flip_weight
    if count == 1:
        tokens, has, kinds = near.sample_with_kind(cap, gen, weights)
        truth = near.truth(split, img, cap[has], kinds[has])
        return tokens[has], truth
    tokens, row, kinds = near.sample_many(cap, gen, count, weights)
    return tokens, near.truth(split, img, cap[row], kinds)
