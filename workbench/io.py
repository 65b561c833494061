"""Safe file I/O: atomic writes, JSON, and checksummed safetensors checkpoints.

Nothing already written is lost: every write goes to a temporary file in the same folder (``.<name>.XXXX.tmp``),
is flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX); a process killed mid-write
leaves the old file and at most a temporary, which :func:`remove_temporaries` deletes.

A checkpoint folder holds ``config.json`` (kind, config, metadata), ``model.safetensors`` (the weights), any other
files its writer adds, and ``manifest.json``: the SHA-256 of every one of those files, written last. Loading
verifies every checksum before reading anything, so a checkpoint is loaded whole or refused: a truncated,
corrupted, edited or half-written file (a process killed between two of them) raises :class:`CheckpointError`.
Nothing here unpickles: tensors are safetensors, everything else JSON. Checkpoints written before the manifest
(``config.json`` records the weights' SHA-256 only) still load; their ``config.json`` is not covered.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FORMAT = "cprd-workbench checkpoint"
CHECKPOINT_VERSION = 2
"""Version 2: a manifest over every file. Version 1 (no ``format_version`` in config.json): weights checksum only."""
TEMP_SUFFIX = ".tmp"


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
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


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries (``.<name>.XXXX.tmp``) that interrupted atomic writes left in ``folder``; return them.

    Only for folders a single writer owns (a run folder, a checkpoint being written).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_manifest(folder: str | os.PathLike, names: Sequence[str]) -> Path:
    """Write ``folder/manifest.json``: the SHA-256 of each named file of ``folder`` (write it last)."""
    folder = Path(folder)
    files = {name: sha256_file(folder / name) for name in names}
    return write_json(folder / MANIFEST_FILE, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                                               "files": files})


def verify_manifest(folder: str | os.PathLike) -> dict[str, str]:
    """``{file name: SHA-256}`` of ``folder``'s manifest after checking every listed file against it.

    Raises:
        CheckpointError: the manifest is unreadable, or a listed file is missing or differs from its checksum.
    """
    folder = Path(folder)
    try:
        manifest = read_json(folder / MANIFEST_FILE, what="checkpoint manifest")
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from err
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != CHECKPOINT_FORMAT or not isinstance(files, dict) or not files:
        raise CheckpointError(f"{folder / MANIFEST_FILE} is not a workbench checkpoint manifest")
    for name, digest in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise CheckpointError(f"checkpoint {folder} is incomplete: {name} (listed in {MANIFEST_FILE}) is missing")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path} is corrupt or was edited: its SHA-256 does not match the one recorded in "
                                  f"{MANIFEST_FILE} (the file changed after the checkpoint was written, or the save "
                                  "was interrupted); retrain, or restore the folder from a copy")
    return dict(files)


def save_checkpoint(
    folder: str | os.PathLike,
    kind: str,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
    files: Sequence[str] = (),
) -> Path:
    """Write ``folder/model.safetensors``, ``folder/config.json`` (kind, config, checksum, extra) and, last,
    ``folder/manifest.json`` over them and over ``files`` (other files of ``folder`` its writer already wrote)."""
    folder = Path(folder)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)  # rewriting in place: incomplete until the new manifest
    digest = save_tensors(folder / WEIGHTS_FILE, state)
    from workbench import __version__

    meta = {"kind": kind, "config": config, "sha256": digest, "workbench_version": __version__,
            "format_version": CHECKPOINT_VERSION}
    meta.update(extra or {})
    write_json(folder / CONFIG_FILE, meta)
    write_manifest(folder, [CONFIG_FILE, WEIGHTS_FILE, *files])
    return folder


def load_checkpoint(
    folder: str | os.PathLike, kind: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load ``(meta, state)`` from a checkpoint folder, checking its manifest (every file), kind and checksum.

    ``meta["manifest"]`` holds the manifest's ``{file: SHA-256}`` (``{}`` for a checkpoint written before manifests).

    Raises:
        CheckpointError: the folder, its config or weights are missing, corrupt, edited, of another kind, or the
            checkpoint was left incomplete (its manifest is missing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    manifest = verify_manifest(folder) if (folder / MANIFEST_FILE).is_file() else {}
    try:
        meta = read_json(folder / CONFIG_FILE, what="checkpoint config")
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from err
    if not isinstance(meta, dict) or not {"kind", "config", "sha256"} <= meta.keys():
        raise CheckpointError(f"{folder / CONFIG_FILE} lacks the keys kind/config/sha256 of a workbench checkpoint")
    version = meta.get("format_version", 1)
    if not manifest and (not isinstance(version, int) or version >= 2):
        raise CheckpointError(f"checkpoint {folder} is incomplete: {MANIFEST_FILE} is missing (the save was "
                              "interrupted, or the file was deleted); retrain, or restore the folder from a copy")
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"checkpoint {folder} holds a {meta['kind']!r} model, expected a {kind!r} model")
    if manifest and WEIGHTS_FILE not in manifest:
        raise CheckpointError(f"{folder / MANIFEST_FILE} does not list {WEIGHTS_FILE}")
    meta["manifest"] = manifest
    weights = load_tensors(folder / WEIGHTS_FILE, sha256=None if manifest else meta["sha256"])
    return meta, weights
