"""Experiments: the workspace (data, teacher, students, store, evaluation), one run, the store fill, the plan of
``reproduce`` and its parallel execution.

    from workbench.experiments import open_workspace, train_run
    ws = open_workspace()
    metrics = train_run(ws, profile("quick"), "runs/itc")
"""

from workbench.experiments.runs import fill_store, load_run, mined_pairs, train_run, train_teacher_run
from workbench.experiments.workspace import (
    DEFAULT_TEACHER,
    DEFAULT_WORLD,
    WORLD_PRESETS,
    WORLD_TEACHERS,
    BuiltinWorkspace,
    KarpathyWorkspace,
    Workspace,
    open_karpathy_workspace,
    open_workspace,
    recorded_data,
    teacher_for_world,
    workspace_from_record,
    world_name,
)

__all__ = [
    "DEFAULT_TEACHER",
    "DEFAULT_WORLD",
    "WORLD_PRESETS",
    "WORLD_TEACHERS",
    "BuiltinWorkspace",
    "KarpathyWorkspace",
    "Workspace",
    "fill_store",
    "load_run",
    "mined_pairs",
    "open_karpathy_workspace",
    "open_workspace",
    "recorded_data",
    "train_run",
    "teacher_for_world",
    "train_teacher_run",
    "workspace_from_record",
    "world_name",
]
