"""Run many student trainings, in parallel worker processes, skipping runs already finished.

Each job is a (run folder, FitConfig, rerank flag). A finished run folder (``metrics.json`` present and its
``config.json`` recording the same fit config) is reused, so an interrupted ``reproduce`` / ``demo`` resumes where
it stopped. Workers share the persistent teacher-score store (SQLite handles concurrent writers).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.io import read_json
from workbench.training.config import FitConfig


@dataclass(frozen=True)
class Job:
    """One student training run.

    Attributes:
        out_dir: the run folder.
        cfg: the run's config.
        rerank: evaluate the teacher re-ranking this student too.
        controlled: distil from a ControlledTeacher with these settings instead of the trained teacher.
        probe_every: gradient-coordination probe period (0 = off).
        variant: the plan variant it belongs to (``""`` outside a plan); seed: its seed index.
    """

    out_dir: Path
    cfg: FitConfig
    rerank: bool = False
    controlled: dict | None = None
    probe_every: int = 0
    variant: str = ""
    seed: int = 0


def finished(job: Job) -> dict[str, Any] | None:
    """The stored metrics of ``job`` if its folder holds a completed run of the same config, else None."""
    try:
        config = read_json(job.out_dir / "config.json")
        metrics = read_json(job.out_dir / "metrics.json")
    except (FileNotFoundError, ValueError):
        return None
    if config.get("fit") != job.cfg.to_dict() or config.get("controlled_teacher") != job.controlled:
        return None
    if job.rerank and "rerank" not in metrics:
        return None
    return metrics


_WORKSPACE = None


def _init_worker(data: dict, threads: int) -> None:
    import torch

    from workbench.experiments.workspace import workspace_from_record

    torch.set_num_threads(threads)
    global _WORKSPACE
    _WORKSPACE = workspace_from_record(data)


def _run(job: Job) -> dict[str, Any]:
    return _run_here(_WORKSPACE, job)


def _run_here(ws, job: Job) -> dict[str, Any]:
    from workbench.device import release_host_memory

    try:
        return _train(ws, job)
    finally:
        release_host_memory()  # a process training run after run: without this its heap grows ~100 MB a run


def _train(ws, job: Job) -> dict[str, Any]:
    from workbench.experiments.runs import train_run  # here: the runs module imports this one

    return train_run(ws, job.cfg, job.out_dir, rerank=job.rerank, controlled=job.controlled,
                     probe_every=job.probe_every, overwrite=True)  # an unfinished or other run there is redone


def run_jobs(ws, jobs: list[Job], workers: int | None = None, log=print) -> dict[Path, dict[str, Any]]:
    """Run every job not already finished; return {out_dir: metrics}. ``workers`` defaults to the CPU count (max 4)."""
    results = {job.out_dir: m for job in jobs if (m := finished(job)) is not None}
    todo = [job for job in jobs if job.out_dir not in results]
    if todo:
        log(f"[runs] {len(results)} finished already, {len(todo)} to train")
    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            results[job.out_dir] = _run_here(ws, job)
            log(f"[runs] done {job.out_dir.name}")
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    init = (ws.describe(), threads)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=init) as pool:
        futures = {pool.submit(_run, job): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            results[job.out_dir] = future.result()
            log(f"[runs] done {job.out_dir.name}")
    return results
