"""Safe file I/O: atomic writes, JSON, and checksummed safetensors checkpoints.

Nothing already written is lost: every write goes to a temporary file in the same folder, is flushed to disk,
then renamed over the target (``os.replace`` is atomic on POSIX). A checkpoint records the SHA-256 of its
weights in ``config.json``; loading verifies it, so a truncated or corrupted file is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, corrupt, or of the wrong kind."""


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON from ``path``; raise ``ValueError`` naming ``what`` if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} at {path} is not valid JSON: {err}") from err


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars (an array's .item() fails unless it has one element)
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> str:
    """Save tensors to a safetensors file atomically; return the file's SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        digest = sha256_file(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def load_tensors(path: str | os.PathLike, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file, verifying its SHA-256 first when given; raise ``CheckpointError`` if bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if sha256 is not None and sha256_file(path) != sha256:
        raise CheckpointError(f"weights file {path} is corrupt: its SHA-256 does not match the one recorded")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"weights file {path} is unreadable: {err}") from err


def save_checkpoint(
    folder: str | os.PathLike,
    kind: str,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (kind, config, checksum, extra)."""
    folder = Path(folder)
    digest = save_tensors(folder / WEIGHTS_FILE, state)
    from workbench import __version__

    meta = {"kind": kind, "config": config, "sha256": digest, "workbench_version": __version__}
    meta.update(extra or {})
    write_json(folder / CONFIG_FILE, meta)
    return folder


def load_checkpoint(
    folder: str | os.PathLike, kind: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load ``(meta, state)`` from a checkpoint folder, checking its kind and checksum.

    Raises:
        CheckpointError: the folder, its config or weights are missing, corrupt, or of another kind.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    try:
        meta = read_json(folder / CONFIG_FILE, what="checkpoint config")
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from err
    if not isinstance(meta, dict) or not {"kind", "config", "sha256"} <= meta.keys():
        raise CheckpointError(f"{folder / CONFIG_FILE} lacks the keys kind/config/sha256 of a workbench checkpoint")
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"checkpoint {folder} holds a {meta['kind']!r} model, expected a {kind!r} model")
    return meta, load_tensors(folder / WEIGHTS_FILE, sha256=meta["sha256"])
