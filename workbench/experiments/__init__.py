"""Experiments: the workspace (data, teacher, students, store, evaluation), one run, the store fill, the plan of
``reproduce`` and its parallel execution.

    from workbench.experiments import open_workspace, train_run
    ws = open_workspace()
    metrics = train_run(ws, profile("quick"), "runs/itc")
    several = train_runs_batched(ws, [RunSpec(profile("quick", seed=s), f"runs/itc{s}") for s in range(3)])
"""

from workbench.experiments.karpathy import KarpathyWorkspace, open_karpathy_workspace
from workbench.experiments.records import recorded_data, workspace_from_record
from workbench.experiments.runs import (
    RunSpec,
    fill_store,
    load_run,
    mined_pairs,
    train_run,
    train_runs_batched,
    train_teacher_run,
)
from workbench.experiments.workspace import (
    DEFAULT_TEACHER,
    DEFAULT_WORLD,
    WORLD_PRESETS,
    WORLD_TEACHERS,
    BuiltinWorkspace,
    Workspace,
    open_workspace,
    teacher_for_world,
    world_name,
)

__all__ = [
    "DEFAULT_TEACHER",
    "DEFAULT_WORLD",
    "WORLD_PRESETS",
    "WORLD_TEACHERS",
    "BuiltinWorkspace",
    "KarpathyWorkspace",
    "RunSpec",
    "Workspace",
    "fill_store",
    "load_run",
    "mined_pairs",
    "open_karpathy_workspace",
    "open_workspace",
    "recorded_data",
    "train_run",
    "teacher_for_world",
    "train_runs_batched",
    "train_teacher_run",
    "workspace_from_record",
    "world_name",
]
