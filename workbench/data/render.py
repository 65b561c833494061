"""Rendering scenes to small RGB images: each object fills (big) or sits centred in (small) one 8x8 grid cell.

Objects are aligned with the cells that models cut into patches (a prototype with free-floating objects made shape
perception unlearnable in minutes on a CPU). Colours get a little per-object jitter and pixels a little noise,
so perception is learned, not read off exact values.
"""

from __future__ import annotations

import numpy as np

from workbench.data.scene import GRID, Scene

CELL = 8
IMAGE_SIZE = GRID * CELL
RGB = np.array(
    [
        [0.90, 0.12, 0.10],  # red
        [0.15, 0.75, 0.15],  # green
        [0.15, 0.30, 0.95],  # blue
        [0.95, 0.88, 0.10],  # yellow
        [0.62, 0.18, 0.82],  # purple
        [0.10, 0.85, 0.88],  # cyan
    ],
    dtype=np.float32,
)
BACKGROUND = np.array([0.18, 0.18, 0.20], dtype=np.float32)
HALF_EXTENT = (2.6, 3.8)  # small, big: half the side of the shape's bounding box, in pixels
SUPERSAMPLE = 4


def shape_mask(shape: int, size: int) -> np.ndarray:
    """float [CELL, CELL] in [0, 1]: pixel coverage of a shape of the given size centred in a cell.

    Shapes are drawn at ``SUPERSAMPLE`` x resolution and averaged down (anti-aliasing), so even small shapes
    differ in their edge pixels.
    """
    n = CELL * SUPERSAMPLE
    h = HALF_EXTENT[size]
    c = (np.arange(n) + 0.5) / SUPERSAMPLE - CELL / 2
    dy, dx = np.meshgrid(c, c, indexing="ij")
    inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == 0:  # square
        fine = inside
    elif shape == 1:  # circle
        fine = dx**2 + dy**2 <= h**2
    elif shape == 2:  # triangle, apex up
        fine = inside & (np.abs(dx) <= (dy + h) / 2)
    elif shape == 3:  # cross
        arm = h / 3
        fine = inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    else:
        raise ValueError(f"shape must be an index in [0, 4), got {shape}")
    return fine.reshape(CELL, SUPERSAMPLE, CELL, SUPERSAMPLE).mean(axis=(1, 3)).astype(np.float32)


_MASKS = {(s, z): shape_mask(s, z) for s in range(4) for z in range(2)}


def render_scene(scene: Scene, rng: np.random.Generator, noise: float = 0.04, jitter: float = 0.06) -> np.ndarray:
    """float32 [3, IMAGE_SIZE, IMAGE_SIZE] in [0, 1]."""
    img = np.broadcast_to(BACKGROUND[:, None, None], (3, IMAGE_SIZE, IMAGE_SIZE)).copy()
    for obj in scene.objects:
        colour = np.clip(RGB[obj.colour] + rng.normal(0, jitter, 3).astype(np.float32), 0, 1)
        mask = _MASKS[(obj.shape, obj.size)]
        cell = img[:, obj.row * CELL : (obj.row + 1) * CELL, obj.col * CELL : (obj.col + 1) * CELL]
        cell *= 1 - mask
        cell += mask * colour[:, None, None]
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)
