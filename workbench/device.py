"""Device and precision selection: CUDA when available, mixed precision on GPU, plain fp32 on CPU."""

from __future__ import annotations

import contextlib

import torch

from workbench.checks import check_choice


def pick_device(device: str = "auto") -> torch.device:
    """Return ``cuda`` if available (for ``"auto"``), else ``cpu``; an explicit ``"cuda"`` must exist."""
    check_choice("device", device.split(":")[0], ["auto", "cpu", "cuda", "mps"])
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine")
    return torch.device(device)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (when ``enabled``); a no-op context elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
