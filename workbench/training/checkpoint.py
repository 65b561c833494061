"""Student checkpoints: weights in safetensors (+ config.json with a checksum) and the trainer's state beside them.

    folder/model.safetensors   student weights (stem included, so a checkpoint is self-contained)
    folder/config.json         kind, student config, fit config, step, sha256 of the weights
    folder/trainer_state.pt    optimizer, scheduler, RNG, history, mining pools (for exact resume)
"""

from __future__ import annotations

import io as _io
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench.io import CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint
from workbench.models.student import DualEncoder, StudentConfig
from workbench.training.config import FitConfig

if TYPE_CHECKING:
    from workbench.training.loop import TrainState

TRAINER_FILE = "trainer_state.pt"


def save_trainer_state(folder: Path, state: TrainState, cfg: FitConfig) -> None:
    """Write the student checkpoint and the trainer state (both atomically; trainer state first)."""
    blob = {
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "generator": state.generator.get_state(),
        "history": state.history,
        "queues": {k: q.state_dict() for k, q in state.queues.items()},
        "gallery": state.gallery,
    }
    buffer = _io.BytesIO()
    torch.save(blob, buffer)
    atomic_write_bytes(folder / TRAINER_FILE, buffer.getvalue())
    extra = {"fit_config": cfg.to_dict(), "step": state.step}
    save_checkpoint(folder, "student", state.student.config_dict(), state.student.state_dict(), extra)


def load_trainer_state(folder: Path, state: TrainState, cfg: FitConfig) -> None:
    """Restore ``state`` from ``folder``; the checkpoint must come from a run with the same config."""
    meta, weights = load_checkpoint(folder, kind="student")
    if meta.get("fit_config") != cfg.to_dict():
        raise CheckpointError(f"checkpoint {folder} was written by a run with a different config; cannot resume")
    try:
        blob = torch.load(folder / TRAINER_FILE, weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"trainer state {folder / TRAINER_FILE} is unreadable: {err}") from err
    state.student.load_state_dict(weights)
    state.optimizer.load_state_dict(blob["optimizer"])
    state.scheduler.load_state_dict(blob["scheduler"])
    state.generator.set_state(blob["generator"])
    state.history = blob["history"]
    for k, q in state.queues.items():
        q.load_state_dict(blob["queues"][k])
    state.gallery = blob["gallery"]
    state.step = int(meta["step"])


def load_student(folder: str | Path, device: str = "auto") -> DualEncoder:
    """A trained student from a checkpoint folder (checksum verified; wrong kind or corrupt -> CheckpointError).

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
    student = DualEncoder(StudentConfig.from_dict(meta["config"]))
    try:
        student.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {folder} does not fit a student of its recorded config: {err}") from err
    return student.eval()
