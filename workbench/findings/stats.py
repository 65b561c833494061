"""Statistics shared by the findings: the one mean / std / n / CI helper, and array plumbing.

- :func:`seed_stats`: a metric over seeds (or any repeated measurement): mean, sample std, n, the values
  themselves and a 95 % confidence interval of the mean (Student t). Every table of the workbench is built from it,
  so one seed always reads the same way (std and CI ``None``: undefined, not zero).
- :func:`summary`: the same for a distribution of per-query statistics, plus its median and how many were undefined.
- Inputs as float64 numpy (:func:`as_array`, :func:`as_mask`), JSON-safe numbers (:func:`number`).

The analyses accept torch tensors, numpy arrays or nested lists, compute in float64 numpy, and return plain Python
floats/ints/lists (``None`` where a statistic is undefined, so that ``findings.json`` stays strict JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

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


def seed_stats(values: ArrayLike) -> dict[str, Any]:
    """Mean, sample std (ddof = 1), n, the values, and the 95 % confidence interval of the mean (Student t, n - 1
    degrees of freedom).

    Args:
        values: one number per seed (NaN/inf are not allowed: a failed run must be reported, not averaged away).

    Returns:
        ``{"mean", "std", "n", "values", "ci95": [low, high]}``; ``std`` and the interval are ``None`` for fewer
        than two values, ``mean`` too for none.
    """
    arr = as_array("values", values).ravel()
    require_finite("values", arr)
    n = int(arr.size)
    mean = number(arr.mean()) if n else None
    std = number(arr.std(ddof=1)) if n > 1 else None
    ci = None
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1)) * std / np.sqrt(n)
        ci = [float(mean - half), float(mean + half)]
    return {"mean": mean, "std": std, "n": n, "values": [float(v) for v in arr], "ci95": ci}


def summary(x: ArrayLike) -> dict[str, Any]:
    """:func:`seed_stats`' mean, std and n of the finite entries of ``x`` (NaN = undefined, left out), plus the
    median and ``n_undefined`` (the number of NaN entries, e.g. queries where a per-query statistic does not exist);
    no per-entry values (there is one per query)."""
    arr = as_array("x", x).ravel()
    ok = arr[np.isfinite(arr)]
    base = seed_stats(ok)
    return {"mean": base["mean"], "std": base["std"], "median": number(np.median(ok)) if ok.size else None,
            "n": base["n"], "n_undefined": int(arr.size - ok.size)}


def paired_difference(a: dict[int, float] | ArrayLike, b: dict[int, float] | ArrayLike) -> dict[str, Any]:
    """``a - b`` paired by seed: :func:`seed_stats` of the per-seed differences (mean, std, n, values, 95 % CI).

    Args:
        a, b: one value per seed, as ``{seed: value}`` (paired on the seeds both have) or as equal-length
            sequences in seed order.

    Returns:
        :func:`seed_stats` of the differences, plus ``"seeds"`` (the paired seeds) and ``"excludes_zero"`` (the CI
        lies entirely above or below 0; ``None`` with fewer than two pairs).
    """
    if isinstance(a, dict) and isinstance(b, dict):
        seeds = sorted(set(a) & set(b))
        diffs = [a[s] - b[s] for s in seeds]
    else:
        xa, xb = as_array("a", a).ravel(), as_array("b", b).ravel()
        if xa.shape != xb.shape:
            raise ValueError(f"a and b must hold one value per seed each, got {xa.size} and {xb.size} values")
        seeds, diffs = list(range(xa.size)), list(xa - xb)
    out = seed_stats(diffs) | {"seeds": seeds}
    ci = out["ci95"]
    out["excludes_zero"] = None if ci is None else bool(ci[0] > 0 or ci[1] < 0)
    return out


def plateau_step(steps: ArrayLike, values: ArrayLike, *, tolerance: float = 0.01, window: int = 3) -> dict[str, Any]:
    """The first logged step from which a learning curve stays within ``tolerance`` of its plateau.

    The plateau is the mean of the last ``window`` logged values (the curve's end); the answer is the first step
    whose value and every later value are at least ``(1 - tolerance) x plateau`` (for a metric that grows, such as
    validation RSUM).

    Returns:
        ``{"plateau", "step", "converged_at_end"}``: ``converged_at_end`` is False when the last ``window`` values
        still rise by more than ``tolerance`` (the run should have been longer).
    """
    s, v = as_array("steps", steps).ravel(), as_array("values", values).ravel()
    if s.shape != v.shape or s.size < window:
        raise ValueError(f"steps and values need the same length >= window ({window}), got {s.size} and {v.size}")
    require_finite("values", v)
    level = float(v[-window:].mean())
    ok = v >= (1 - tolerance) * level
    tail_ok = np.flip(np.cumprod(np.flip(ok)))  # True from the first index after which every value is ok
    first = int(np.argmax(tail_ok)) if tail_ok.any() else len(v) - 1
    rising = bool(v[-1] - v[-window] > tolerance * abs(level))
    return {"plateau": level, "step": int(s[first]), "converged_at_end": not rising}
