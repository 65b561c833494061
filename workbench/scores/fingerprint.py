"""Teacher fingerprints: a hash naming exactly which weights and config produced a score.

The teacher-score store keys every score by the fingerprint of the teacher that computed it, so scores of one
teacher are never served for another. The fingerprint covers every parameter and buffer (name, dtype, shape,
bytes) and the JSON-serialised config; it does not depend on the device, on ``requires_grad``, on train/eval
mode or on the order in which tensors were registered, and it survives a save/load round trip.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

FINGERPRINT_VERSION = 1
"""Bumped whenever the hashing scheme changes (old fingerprints then simply stop matching)."""


def fingerprint_module(module: torch.nn.Module, config: dict[str, Any]) -> str:
    """A 40-hex-digit BLAKE2b hash of ``module``'s parameters and buffers and of ``config``.

    Args:
        module: the (teacher) model; every parameter and buffer is hashed, shared ones once per name.
        config: what else determines the scores (architecture settings, preprocessing, which output is used);
            it must be JSON-serialisable (keys are sorted, so dict order does not matter).

    Returns:
        The fingerprint, e.g. ``"3f2a…"`` (40 characters).
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"cprd-workbench fingerprint v{FINGERPRINT_VERSION}\0".encode())
    digest.update(_config_bytes(config))
    named = [("param:" + n, t) for n, t in module.named_parameters(remove_duplicate=False)]
    named += [("buffer:" + n, t) for n, t in module.named_buffers(remove_duplicate=False)]
    for name, tensor in sorted(named, key=lambda item: item[0]):
        _update_tensor(digest, name, tensor)
    return digest.hexdigest()


def _config_bytes(config: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config must be JSON-serialisable (finite numbers, str keys) to fingerprint: {err}") from err
    return text.encode() + b"\0"


def _update_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    """Feed one named tensor (name, dtype, shape, raw bytes) to ``digest``."""
    if tensor.is_meta or tensor.layout != torch.strided:
        raise ValueError(f"cannot fingerprint {name!r}: it is a {tensor.layout}/meta tensor without plain data")
    data = tensor.detach().to("cpu").contiguous()
    header = f"{name}\0{data.dtype}\0{tuple(data.shape)}\0{data.numel()}\0"
    digest.update(header.encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
