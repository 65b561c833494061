"""Re-opening the workspace a run folder recorded (``config.json["data"]``): the built-in world or Karpathy data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.data.world import WorldConfig
from workbench.experiments.karpathy import open_karpathy_workspace
from workbench.experiments.workspace import DEFAULT_TEACHER, Workspace, open_workspace, teacher_for_world
from workbench.models.student import StudentConfig


def recorded_data(config: dict[str, Any]) -> dict[str, Any]:
    """A run's ``config.json["data"]``; run folders written before the unified format are read too."""
    if "data" in config:
        return dict(config["data"])
    if "real" in config:  # legacy real-data run folder
        return {"kind": "karpathy", **config["real"]}
    legacy = {k: config[k] for k in ("world", "teacher", "store") if k in config}
    return {"kind": "builtin", **legacy} if legacy else {}


def workspace_from_record(data: dict[str, Any], **overrides: Any) -> Workspace:
    """Re-open the workspace a run recorded (``recorded_data``), with ``overrides`` (non-None values) on top.

    Overrides for the built-in world: ``world_cfg``, ``teacher``, ``store``, ``device``; for real data the keyword
    arguments of :func:`open_karpathy_workspace` plus ``dataset``.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    kind = "karpathy" if given.get("dataset") not in (None, "builtin") else data.get("kind", "builtin")
    if given.get("dataset") == "builtin":
        kind = "builtin"
    if kind == "builtin":
        world = given.get("world_cfg") or WorldConfig(**data.get("world", {}))
        teacher = given.get("teacher") or data.get("teacher", "auto")
        if teacher != "auto" and Path(teacher) == DEFAULT_TEACHER and teacher_for_world(world) != DEFAULT_TEACHER:
            teacher = teacher_for_world(world)  # recorded before the ambiguous-v1 teacher moved out of assets/teacher
        student = given.get("student") or data.get("student")  # a preset name (the CLI) or a recorded config
        student = StudentConfig.from_dict(student) if isinstance(student, dict) else student
        return open_workspace(world, teacher, given.get("store") or data.get("store"), given.get("device", "auto"),
                              student=student)
    keys = ("dataset", "karpathy_json", "image_root", "teacher", "student", "student_kind", "store", "device",
            "max_images", "restval_as_train", "teacher_cache_images")
    merged = {k: given.get(k, data.get(k)) for k in keys}
    merged = {k: v for k, v in merged.items() if v is not None}
    return open_karpathy_workspace(merged.pop("dataset"), merged.pop("karpathy_json", None),
                                   merged.pop("image_root", None), **merged)
