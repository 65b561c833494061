"""Run many student trainings, in parallel worker processes and as batched models, skipping runs already finished.

Each job is a (run folder, FitConfig, rerank flag). A finished run folder (``metrics.json`` present and its
``config.json`` recording the same fit config) is reused, so an interrupted ``reproduce`` / ``demo`` resumes where
it stopped. Workers share the persistent teacher-score store (SQLite handles concurrent writers). Each worker task
is a list of jobs: one is trained alone (:func:`~workbench.experiments.runs.train_run`), several as one batched model
(:func:`~workbench.experiments.runs.train_runs_batched`, on a GPU by default).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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
_PROGRESS = None  # a queue of finished member-steps back to the main process (worker side)


def _init_worker(data: dict, threads: int, progress=None, dense: bool | None = None) -> None:
    import torch

    from workbench.experiments.records import workspace_from_record

    torch.set_num_threads(threads)
    global _WORKSPACE, _PROGRESS
    _WORKSPACE = workspace_from_record(data)
    if dense is not None and hasattr(_WORKSPACE, "dense_teacher"):
        _WORKSPACE.dense_teacher = dense
    _PROGRESS = progress


def _run(jobs: list[Job]) -> list[dict[str, Any]]:
    report = _reporter(_PROGRESS.put) if _PROGRESS is not None else None
    try:
        return _run_here(_WORKSPACE, jobs, report)
    finally:
        if report is not None:
            report.flush()


def _run_here(ws, jobs: list[Job], report=None) -> list[dict[str, Any]]:
    """Train ``jobs`` here: one run alone, several as one batched model. ``report(member_steps)`` sees progress."""
    from workbench.device import release_host_memory

    try:
        return _train(ws, jobs, report)
    finally:
        release_host_memory()  # a process training run after run: without this its heap grows ~100 MB a run


def _train(ws, jobs: list[Job], report=None) -> list[dict[str, Any]]:
    from workbench.experiments.runs import train_run, train_runs_batched  # here: the runs module imports this one

    if len(jobs) == 1:  # an unfinished or other run in a job's folder is redone
        job = jobs[0]
        steps = (lambda step, row: report(1),) if report else ()
        return [train_run(ws, job.cfg, job.out_dir, rerank=job.rerank, controlled=job.controlled,
                          probe_every=job.probe_every, step_callbacks=steps, overwrite=True)]
    steps = (lambda step, rows: report(sum(r is not None for r in rows)),) if report else ()
    return train_runs_batched(ws, jobs, step_callbacks=steps, log=print, overwrite=True)


def _reporter(put, every: float = 1.0):
    """A ``report(n)`` that sends accumulated counts through ``put`` at most once a second (cheap IPC)."""
    state = {"n": 0, "at": time.monotonic()}

    def report(n: int) -> None:
        state["n"] += n
        now = time.monotonic()
        if now - state["at"] >= every:
            put(state["n"])
            state["n"], state["at"] = 0, now

    def flush() -> None:
        if state["n"]:
            put(state["n"])
            state["n"] = 0

    report.flush = flush
    return report


def default_members(device: str = "auto") -> int:
    """How many runs one process trains as a batched model by default: 32 on a GPU (a run alone leaves it mostly
    idle: the step is launch-bound), 1 on a CPU (the step is compute-bound there: benchmarks/batched.py measured
    M = 8 batched no faster than the 8 one after another, so worker processes are the better use of the cores)."""
    from workbench.device import pick_device

    return 32 if pick_device(device).type == "cuda" else 1


def batches(jobs: list[Job], members: int, workers: int = 1) -> list[list[Job]]:
    """Jobs grouped into batched runs: jobs that can share a batch (the same
    :data:`~workbench.training.batched.GROUP_FIELDS`), at most ``members`` per batch, and as many batches as
    ``workers`` can keep busy (the jobs of a group are spread evenly over its batches)."""
    from workbench.training.batched import GROUP_FIELDS

    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(getattr(job.cfg, f) for f in GROUP_FIELDS), []).append(job)
    out = []
    for group in groups.values():
        count = -(-len(group) // max(1, members))
        count = min(len(group), -(-count // workers) * workers) if workers > 1 else count
        size = -(-len(group) // count)
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


def run_jobs(ws, jobs: list[Job], workers: int | None = None, log=print, members: int | None = None,
             progress: bool = False) -> dict[Path, dict[str, Any]]:
    """Run every job not already finished; return {out_dir: metrics}.

    Args:
        workers: processes; default: the CPU count (max 4).
        members: runs trained together as one batched model per process (:func:`batches`); default
            :func:`default_members` (32 on a GPU, 1 on a CPU).
        progress: show a progress bar over every run's steps (runs done, runs training now, ETA).
    """
    results = {job.out_dir: m for job in jobs if (m := finished(job)) is not None}
    todo = [job for job in jobs if job.out_dir not in results]
    if todo:
        log(f"[runs] {len(results)} finished already, {len(todo)} to train")
    workers = workers or min(4, os.cpu_count() or 1)
    members = members or default_members(todo[0].cfg.device if todo else "auto")
    if members < 1:
        raise ValueError(f"members must be >= 1 (runs per batched model), got {members}")
    groups = batches(todo, members, workers) if members > 1 else [[job] for job in todo]
    bar = _Progress(todo, progress, log)
    try:
        if workers <= 1 or len(groups) <= 1:
            for group in groups:
                bar.start(group)
                report = _reporter(bar.advance, every=0.0)
                for job, metrics in zip(group, _run_here(ws, group, report), strict=True):
                    results[job.out_dir] = metrics
                bar.done(group)
            return results
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            queue = manager.Queue() if progress else None
            init = (ws.describe(), threads, queue, getattr(ws, "dense_teacher", None))
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init) as pool:
                futures = {pool.submit(_run, group): group for group in groups}
                for group in groups[:workers]:
                    bar.start(group)
                pending = set(futures)
                while pending:
                    finished_now, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    _drain(queue, bar)
                    for future in finished_now:
                        group = futures[future]
                        for job, metrics in zip(group, future.result(), strict=True):
                            results[job.out_dir] = metrics
                        bar.done(group)
                        waiting = [g for g in groups if not bar.started(g)]
                        if waiting:
                            bar.start(waiting[0])
                _drain(queue, bar)
    finally:
        bar.close()
    return results


def _drain(queue, bar) -> None:
    while queue is not None and not queue.empty():
        bar.advance(queue.get())


class _Progress:
    """A tqdm bar over the member-steps of every run to train: ``runs done/total``, runs training now, ETA; or,
    when not shown, a log line per finished run."""

    def __init__(self, todo: list[Job], show: bool, log):
        self.total_runs, self.log, self.done_runs, self.active, self.done_steps = len(todo), log, 0, 0, 0
        self._started: set[int] = set()
        self.bar = None
        if show and todo:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=sum(j.cfg.steps for j in todo), desc="train", unit="step", unit_scale=True,
                            mininterval=2, smoothing=0.05)
            self._postfix()

    def started(self, group: list[Job]) -> bool:
        return id(group[0]) in self._started

    def start(self, group: list[Job]) -> None:
        self._started.add(id(group[0]))
        self.active += len(group)
        self._postfix()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def done(self, group: list[Job]) -> None:
        self.done_runs += len(group)
        self.active -= len(group)
        if self.bar is None:
            for job in group:
                self.log(f"[runs] done {job.out_dir.name}")
        else:
            self.done_steps += sum(j.cfg.steps for j in group)  # a run that stopped early counts as done
            if self.bar.n < self.done_steps:
                self.bar.update(self.done_steps - self.bar.n)
            self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"runs {self.done_runs}/{self.total_runs} done, {self.active} training")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
