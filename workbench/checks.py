"""Argument checks that raise clear errors: the argument's name, what was expected, and what was given.

Every public entry point validates its inputs with these helpers, so a user who passes a negative size or an
unknown name learns which argument was wrong and what would have been accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(name: str, value: Any, *, min_value: int | None = None, max_value: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[min_value, max_value]``; raise ``ValueError``/``TypeError`` else."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {_show(value)}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name} must be <= {max_value}, got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    strict_min: bool = False,
) -> float:
    """Return ``float(value)`` if it is a finite real number in range; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {_show(value)}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if min_value is not None and (value <= min_value if strict_min else value < min_value):
        op = ">" if strict_min else ">="
        raise ValueError(f"{name} must be {op} {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name} must be <= {max_value}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; raise ``ValueError`` listing them otherwise."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {_show(value)}")
    return value


def check_tensor(
    name: str,
    value: Any,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    dtype: torch.dtype | str | None = None,
    finite: bool = False,
) -> torch.Tensor:
    """Check a tensor's type, rank, shape (``None`` = any size), dtype family and finiteness.

    ``dtype`` may be a torch dtype or one of ``"float"``, ``"bool"``, ``"int"``.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, value.shape, strict=True)):
            if want is not None and want != got:
                raise ValueError(
                    f"{name} must have shape {tuple('*' if s is None else s for s in shape)}, "
                    f"got {tuple(value.shape)} (dimension {axis} differs)"
                )
    if dtype is not None:
        ok = {
            "float": value.is_floating_point(),
            "bool": value.dtype == torch.bool,
            "int": not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool,
        }.get(dtype, value.dtype == dtype) if isinstance(dtype, str) else value.dtype == dtype
        if not ok:
            raise ValueError(f"{name} must have dtype {dtype}, got {value.dtype}")
    if finite and value.is_floating_point() and not torch.isfinite(value).all():
        bad = (~torch.isfinite(value)).sum().item()
        raise ValueError(f"{name} must be finite, got {bad} NaN/inf value(s)")
    return value
