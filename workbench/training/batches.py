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


def near_miss_columns(
    split: Split, near: NearMisses, img: torch.Tensor, cap: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Privileged hard negatives: one near-miss of each batch caption, and its truth against every batch image.

    Returns:
        (tokens long [B', T] of the near-misses that exist, truth bool [B, B'] vs the batch images).
    """
    tokens, has, kinds = near.sample_with_kind(cap, gen)
    truth = near.truth(split, img, cap[has], kinds[has])
    return tokens[has], truth
