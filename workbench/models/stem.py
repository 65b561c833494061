"""The shared "pretrained" image stem: a per-patch MLP turning each 8x8 grid cell into a feature vector.

The analogue of the pretrained backbones both models start from in the paper. It is pre-trained on per-cell
attribute labels from the scene descriptions (shape, colour, size of the object in the cell, or empty), then
frozen and shared by the teacher and every student, so both start from the same perception.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from workbench.checks import check_int, check_tensor
from workbench.data.render import CELL, IMAGE_SIZE
from workbench.data.scene import COLOURS, GRID, SHAPES, SIZES

NUM_PATCHES = GRID * GRID
ATTRIBUTE_CLASSES = {"shape": len(SHAPES) + 1, "colour": len(COLOURS) + 1, "size": len(SIZES) + 1}


@dataclass(frozen=True)
class StemConfig:
    """Per-patch MLP sizes."""

    hidden: int = 128
    dim: int = 64  # feature size of each patch token

    def __post_init__(self) -> None:
        check_int("hidden", self.hidden, min_value=1)
        check_int("dim", self.dim, min_value=1)


def patchify(images: torch.Tensor) -> torch.Tensor:
    """float [B, 3, 24, 24] -> float [B, 9, 3*8*8], row-major cells (cell k = row k // 3, col k % 3)."""
    check_tensor("images", images, shape=(None, 3, IMAGE_SIZE, IMAGE_SIZE), dtype="float")
    b = images.shape[0]
    x = images.reshape(b, 3, GRID, CELL, GRID, CELL).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, NUM_PATCHES, 3 * CELL * CELL)


class PatchStem(nn.Module):
    """images [B, 3, 24, 24] -> patch features [B, 9, dim]; with heads predicting each cell's attributes."""

    def __init__(self, config: StemConfig | None = None):
        super().__init__()
        self.config = config or StemConfig()
        c = self.config
        self.mlp = nn.Sequential(
            nn.Linear(3 * CELL * CELL, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.dim), nn.LayerNorm(c.dim)
        )
        self.heads = nn.ModuleDict({k: nn.Linear(c.dim, n) for k, n in ATTRIBUTE_CLASSES.items()})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mlp(patchify(images) - 0.5)

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-cell attribute logits: {name: float [B, 9, classes]}."""
        feats = self(images)
        return {k: head(feats) for k, head in self.heads.items()}

    def config_dict(self) -> dict:
        return asdict(self.config)


def cell_labels(scene_objects: list) -> torch.Tensor:
    """long [9, 3]: (shape+1, colour+1, size+1) of each cell's object, 0 = empty cell."""
    out = torch.zeros(NUM_PATCHES, 3, dtype=torch.long)
    for o in scene_objects:
        out[o.row * GRID + o.col] = torch.tensor([o.shape + 1, o.colour + 1, o.size + 1])
    return out
