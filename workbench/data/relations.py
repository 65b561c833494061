"""Which (image, caption) pairs count as matches: the one notion shared by mining, losses and evaluation.

A relation answers "is caption c a positive for image i?" for index tensors, vectorised:

- ``pairs(img [P], cap [P]) -> bool [P]``   elementwise
- ``block(img [q], cap [c]) -> bool [q, c]`` outer product (rows = images, columns = captions)

Two relations exist for every dataset:

- :class:`ImageIdRelation` (the COCO protocol): a caption matches only the image it was written for.
- a semantic relation (the built-in world's ground truth): a caption matches every image it is true for.
  See :class:`workbench.data.world.SemanticRelation`.

Indices are positions in an evaluation/training split (0..N-1 images, 0..M-1 captions), not global ids.
"""

from __future__ import annotations

import torch

from workbench.checks import check_tensor


class PairRelation:
    """Base class: subclasses implement :meth:`pairs`; :meth:`block` broadcasts it."""

    num_images: int
    num_captions: int

    def pairs(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """``img`` long [P], ``cap`` long [P] -> bool [P]."""
        raise NotImplementedError

    def block(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """``img`` long [q], ``cap`` long [c] -> bool [q, c]."""
        q, c = img.numel(), cap.numel()
        flat = self.pairs(img.reshape(q, 1).expand(q, c).reshape(-1), cap.reshape(1, c).expand(q, c).reshape(-1))
        return flat.reshape(q, c)

    def dense(self) -> torch.Tensor:
        """The full bool [N, M] matrix (small splits only)."""
        return self.block(torch.arange(self.num_images), torch.arange(self.num_captions))


class ImageIdRelation(PairRelation):
    """COCO protocol: caption ``c`` matches image ``i`` iff ``caption_image[c] == i``.

    Args:
        caption_image: long [M], the index of the image each caption was written for.
        num_images: N, the number of images in the split.
    """

    def __init__(self, caption_image: torch.Tensor, num_images: int):
        check_tensor("caption_image", caption_image, ndim=1, dtype="int")
        if caption_image.numel() and (caption_image.min() < 0 or caption_image.max() >= num_images):
            raise ValueError(
                f"caption_image must hold image indices in [0, {num_images}), "
                f"got values in [{caption_image.min().item()}, {caption_image.max().item()}]"
            )
        self.caption_image = caption_image.long()
        self.num_images = int(num_images)
        self.num_captions = int(caption_image.numel())

    def pairs(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        return self.caption_image.to(cap.device)[cap] == img

    def block(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        return self.caption_image.to(cap.device)[cap][None, :] == img[:, None]

    def captions_of(self, img: torch.Tensor) -> list[torch.Tensor]:
        """For each image index, the long tensor of its own captions' indices."""
        return [torch.nonzero(self.caption_image == i).flatten() for i in img.tolist()]


class DenseRelation(PairRelation):
    """A relation given as an explicit bool [N, M] matrix (hand-written tests, small splits)."""

    def __init__(self, matrix: torch.Tensor):
        check_tensor("matrix", matrix, ndim=2, dtype="bool")
        self.matrix = matrix
        self.num_images, self.num_captions = matrix.shape

    def pairs(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        return self.matrix.to(img.device)[img, cap]

    def block(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        return self.matrix.to(img.device)[img][:, cap]


def ids_to_index(table: torch.Tensor, ids: torch.Tensor, name: str, split: str) -> torch.Tensor:
    """Positions of global ``ids`` long [P] in ``table`` long [N] (ids need not be contiguous or sorted).

    Raises:
        KeyError: an id is not in the table.
    """
    check_tensor(name, ids, ndim=1, dtype="int")
    order = torch.argsort(table)
    sorted_ids = table[order]
    ids = ids.cpu().long()
    pos = torch.searchsorted(sorted_ids, ids).clamp(max=max(len(sorted_ids) - 1, 0))
    unknown = sorted_ids[pos] != ids
    if unknown.any():
        example = int(ids[unknown][0])
        raise KeyError(f"{name} holds {int(unknown.sum())} id(s) that are not in split {split!r}, e.g. {example}")
    return order[pos]
