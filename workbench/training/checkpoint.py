"""Student checkpoints: weights, config and the trainer's state, with a manifest; written whole or not at all.

    folder/model.safetensors     student weights (stem included, so a checkpoint is self-contained)
    folder/config.json           kind, student config, fit config, step
    folder/trainer.safetensors   the trainer state's tensors: optimizer moments, RNG state, queues, gallery
    folder/trainer.json          the rest of it (optimizer and scheduler settings, history), tensors by name
    folder/manifest.json         SHA-256 of the four files above, written last (see :mod:`workbench.io`)

No pickle anywhere: a checkpoint cannot run code when loaded. A save writes a complete checkpoint into
``<folder>.new`` and then swaps it in (``folder`` -> ``<folder>.old``, ``<folder>.new`` -> ``folder``, remove
``<folder>.old``), so a process killed at any moment leaves either the previous checkpoint or the new one whole;
:func:`recover_checkpoint` finishes or undoes an interrupted swap and removes the leftovers.
Checkpoints of older versions hold a pickle ``trainer_state.pt``: their weights still load (:func:`load_student`),
but they cannot be resumed (the pickle is never opened).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workbench.io import (
    CONFIG_FILE,
    MANIFEST_FILE,
    CheckpointError,
    load_checkpoint,
    load_tensors,
    read_json,
    save_checkpoint,
    save_tensors,
    sha256_file,
    verify_manifest,
    write_json,
)
from workbench.models.student import DualEncoder, StudentConfig
from workbench.training.config import FitConfig

if TYPE_CHECKING:
    from workbench.training.loop import TrainState

TENSORS_FILE = "trainer.safetensors"
STATE_FILE = "trainer.json"
TRAINER_FILES = (TENSORS_FILE, STATE_FILE)
LEGACY_TRAINER_FILE = "trainer_state.pt"
"""The pickle of checkpoints written before version 2; never loaded."""
TRAINER_FILE = STATE_FILE  # kept for callers that named the trainer-state file


def save_trainer_state(folder: Path, state: TrainState, cfg: FitConfig) -> None:
    """Write the student checkpoint and the trainer state to ``folder`` as one unit (staged, then swapped in)."""
    folder = Path(folder)
    recover_checkpoint(folder)
    staging = _sibling(folder, "new")
    tensors: dict[str, torch.Tensor] = {}
    blob = {
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "generator": state.generator.get_state(),
        "history": state.history,
        "queues": {k: q.state_dict() for k, q in state.queues.items()},
        "gallery": state.gallery,
    }
    encoded = encode(blob, tensors, "")
    staging.mkdir(parents=True)
    save_tensors(staging / TENSORS_FILE, tensors)
    write_json(staging / STATE_FILE, encoded)
    extra = {"fit_config": cfg.to_dict(), "step": state.step}
    save_checkpoint(staging, "student", state.student.config_dict(), state.student.state_dict(), extra,
                    files=TRAINER_FILES)
    _swap_in(staging, folder)


def load_trainer_state(folder: Path, state: TrainState, cfg: FitConfig) -> None:
    """Restore ``state`` from ``folder``; the checkpoint must come from a run with the same config.

    Raises:
        CheckpointError: the checkpoint is incomplete, corrupt or edited, was written by another config, holds no
            trainer state, or is of the pickle format of older versions (never unpickled: it names the fix).
    """
    folder = Path(folder)
    meta, weights = load_checkpoint(folder, kind="student")
    if not set(TRAINER_FILES) <= meta["manifest"].keys():
        raise CheckpointError(_no_trainer_state(folder))
    if meta.get("fit_config") != cfg.to_dict():
        raise CheckpointError(f"checkpoint {folder} was written by a run with a different config; cannot resume")
    tensors = load_tensors(folder / TENSORS_FILE)  # both files were checked against the manifest just now
    try:
        blob = decode(read_json(folder / STATE_FILE, what="trainer state"), tensors)
        state.student.load_state_dict(weights)
        state.optimizer.load_state_dict(blob["optimizer"])
        state.scheduler.load_state_dict(blob["scheduler"])
        state.generator.set_state(blob["generator"])
        for k, q in state.queues.items():
            q.load_state_dict(blob["queues"][k])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"trainer state in {folder} does not fit this run: {err!r}") from err
    state.history, state.gallery, state.step = blob["history"], blob["gallery"], int(meta["step"])


def _no_trainer_state(folder: Path) -> str:
    if (folder / LEGACY_TRAINER_FILE).exists():
        return (f"checkpoint {folder} was written by an older workbench: its trainer state is a pickle "
                f"({LEGACY_TRAINER_FILE}), which is never loaded because unpickling can run code. Its weights "
                "still load (`eval --checkpoint`); to train again, start the run anew with `--overwrite`")
    return f"checkpoint {folder} holds a model but no trainer state ({', '.join(TRAINER_FILES)}); cannot resume"


def checkpoint_exists(folder: str | Path) -> bool:
    """Whether ``folder`` (or an interrupted save of it) holds a checkpoint to resume from."""
    folder = Path(folder)
    return any(p.is_dir() for p in (folder, _sibling(folder, "new"), _sibling(folder, "old")))


def recover_checkpoint(folder: str | Path) -> list[str]:
    """Finish or undo a save interrupted during its swap, and remove what it left; return what was done.

    ``folder`` missing: the staged ``<folder>.new`` takes its place when it is whole, else ``<folder>.old`` comes
    back. Then any remaining ``.new`` (a partial save) and ``.old`` (the replaced checkpoint) are deleted.
    """
    folder = Path(folder)
    new, old, done = _sibling(folder, "new"), _sibling(folder, "old"), []
    if not folder.exists():
        if new.is_dir() and _whole(new):
            os.replace(new, folder)
            done.append(f"completed the interrupted save in {new}")
        elif old.is_dir():
            os.replace(old, folder)
            done.append(f"restored the previous checkpoint from {old}")
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover)
            done.append(f"removed {leftover}")
    return done


def _sibling(folder: Path, tag: str) -> Path:
    return folder.with_name(f"{folder.name}.{tag}")


def _whole(folder: Path) -> bool:
    try:
        verify_manifest(folder)
    except CheckpointError:
        return False
    return True


def _swap_in(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by the complete checkpoint ``staging`` (two renames; see :func:`recover_checkpoint`)."""
    old = _sibling(folder, "old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    _fsync_dir(folder.parent)
    if old.exists():
        shutil.rmtree(old)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- trainer state <-> (JSON, tensors) ---------------------------------------------------------------------------


def encode(obj: Any, tensors: dict[str, torch.Tensor], name: str) -> Any:
    """A JSON-able copy of ``obj`` whose tensors are moved into ``tensors`` (``{"__tensor__": key}`` in place).

    Handles dicts (string keys, or int/str keys as ``{"__items__": [[k, v], ...]}``), lists, tuples
    (``{"__tuple__": [...]}``), tensors, NumPy scalars and JSON scalars; anything else raises ``TypeError``.
    """
    if isinstance(obj, torch.Tensor):
        tensors[name] = obj.detach().cpu()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: encode(v, tensors, f"{name}.{k}") for k, v in obj.items()}
        return {"__items__": [[_key(k), encode(v, tensors, f"{name}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{name}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{name}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # NumPy scalars
        return obj.item()
    raise TypeError(f"trainer state entry {name or '<root>'} is a {type(obj).__name__}; a checkpoint holds tensors "
                    "and JSON values only")


def _key(k: Any) -> int | str:
    if isinstance(k, bool) or not isinstance(k, int | str):
        raise TypeError(f"trainer state dict key {k!r} must be an int or a str")
    return k


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, dict):
        if obj.keys() == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if obj.keys() == {"__tuple__"}:
            return tuple(decode(v, tensors) for v in obj["__tuple__"])
        if obj.keys() == {"__items__"}:
            return {k: decode(v, tensors) for k, v in obj["__items__"]}
        return {k: decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    return obj


def load_student(folder: str | Path, device: str = "auto") -> DualEncoder:
    """A trained student from a checkpoint folder (every file verified; wrong kind or corrupt -> CheckpointError).

    A built-in :class:`DualEncoder` (on the CPU), or an :class:`~workbench.models.hf.HFStudent` (on ``device``) when
    the checkpoint was written by one (its base model and processor are loaded from its recorded source).
    """
    meta, weights = load_checkpoint(folder, kind="student")
    if meta["config"].get("adapter") == "HFStudent":
        from workbench.models.hf import student_from_checkpoint

        try:
            return student_from_checkpoint(meta["config"], weights, device=device)
        except ValueError as err:
            raise CheckpointError(f"checkpoint {folder}: {err}") from err
    try:
        student = DualEncoder(StudentConfig.from_dict(meta["config"]))
        student.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {folder} does not fit a student of its recorded config: {err}") from err
    return student.eval()


def checkpoint_identity(folder: str | Path) -> dict[str, Any]:
    """What identifies a checkpoint in an evaluation record: path, step and checksums (files verified now)."""
    folder = Path(folder)
    manifest = verify_manifest(folder) if (folder / MANIFEST_FILE).is_file() else {}
    meta = read_json(folder / CONFIG_FILE, what="checkpoint config")
    return {"path": str(folder), "step": meta.get("step"), "weights_sha256": meta.get("sha256"),
            "manifest_sha256": sha256_file(folder / MANIFEST_FILE) if manifest else None, "files": manifest}
