"""Array plumbing shared by the findings' analyses: inputs as float64 numpy, masks, JSON-safe numbers.

The analyses accept torch tensors, numpy arrays or nested lists, compute in float64 numpy, and return plain Python
floats/ints/lists (``None`` where a statistic is undefined, so that ``findings.json`` stays strict JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]


def as_array(name: str, x: ArrayLike, *, ndim: int | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``x`` as a float64 numpy array; raise naming ``name`` on a wrong rank/shape or a non-numeric input."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__} ({err})") from err
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


def as_mask(name: str, mask: ArrayLike | None, shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` as a bool array of ``shape`` (``None`` -> all True); raise naming ``name`` on a mismatch."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a bool array, got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (like the scores), got {arr.shape}")
    return arr


def require_finite(name: str, x: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN/inf where ``mask`` is True (everywhere when ``mask`` is None)."""
    bad = ~np.isfinite(x) if mask is None else ~np.isfinite(x) & mask
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite where used, got {int(bad.sum())} NaN/inf value(s) (first at {first})")


def number(x: Any) -> float | None:
    """A JSON-safe float: ``None`` for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def summary(x: ArrayLike) -> dict[str, Any]:
    """mean, std (ddof=1), median and n of the finite entries of ``x`` (NaN = undefined, left out); ``None`` if empty.

    Also ``n_undefined``, the number of NaN entries (e.g. queries where a per-query statistic does not exist).
    """
    arr = as_array("x", x).ravel()
    ok = arr[np.isfinite(arr)]
    n = int(ok.size)
    return {
        "mean": number(ok.mean()) if n else None,
        "std": number(ok.std(ddof=1)) if n > 1 else None,
        "median": number(np.median(ok)) if n else None,
        "n": n,
        "n_undefined": int(arr.size - n),
    }
