"""One run: train a student, evaluate it, write its folder; and the store fill. One path for both kinds of data.

    ws = open_workspace()                                         # or open_karpathy_workspace(...)
    metrics = train_run(ws, cfg, "runs/cprd")                     # cfg: a FitConfig
    all_metrics = train_runs_batched(ws, [RunSpec(cfg_a, "runs/a"), RunSpec(cfg_b, "runs/b")])  # one batched model
    fill_store(ws, load_student("runs/itc/checkpoint"), "train", top=16)

A run folder holds ``config.json`` (``fit``: the FitConfig; ``data``: the workspace's data, teacher and store;
``student``: the student's config; ``controlled_teacher``; ``processes``), ``history.json`` (one row per logged
step: every loss term and the validation metrics), ``metrics.json`` (the test metrics, their protocol card, the
training time and the teacher store's statistics; ``rsum`` = the workspace's primary RSUM) and ``checkpoint/``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.data.perturbations import minimal_pairs
from workbench.data.world import WorldConfig, build_world
from workbench.device import pick_device
from workbench.distributed import Dist, current
from workbench.evaluation.embed import embed_split
from workbench.evaluation.evaluate import evaluate_teacher, graded_pairs
from workbench.evaluation.protocol import ProtocolCard, TeacherCost
from workbench.experiments.workspace import Announce, Workspace
from workbench.io import TEMP_SUFFIX, read_json, remove_temporaries, save_checkpoint, write_json
from workbench.models.teacher import CrossEncoder, TeacherConfig
from workbench.scores.mining import mine_hard_negatives, relation_exclude
from workbench.scores.similarity import topk_similarity
from workbench.scores.store import StoreStats
from workbench.scores.teacher_scores import TeacherScores
from workbench.training.batched import Member, fit_batched
from workbench.training.checkpoint import checkpoint_exists
from workbench.training.config import FitConfig
from workbench.training.loop import fit, needs_teacher
from workbench.training.stem import pretrain_stem, stem_accuracy
from workbench.training.teacher import TeacherTrainConfig, train_teacher


def train_run(ws: Workspace, cfg: FitConfig, out_dir: str | Path | None, *, card: ProtocolCard | None = None,
              rerank: bool = True, resume: bool = False, progress=None, step_callbacks=(), callbacks=(),
              controlled: dict | None = None, probe_every: int = 0, announce: Announce | None = None,
              dist: Dist | None = None, overwrite: bool = False, check_images: str = "header") -> dict[str, Any]:
    """Train one student, evaluate it under ``card`` (default: the test split, re-ranked by the teacher when
    ``rerank``); write the run folder (main process) when ``out_dir`` is given.

    Before the first step, everything the run will read or write is checked (:func:`check_run_folder`,
    :meth:`Workspace.preflight`), so it cannot fail after training for a bad path, teacher, image or store.

    Args:
        resume: continue the run in ``out_dir`` from its checkpoint (an error when it has none).
        controlled: settings of a :class:`~workbench.models.controlled.ControlledTeacher` to distil from instead
            of the trained teacher (a control experiment; recorded in config.json).
        probe_every: measure gradient coordination (cosine of ITC's and each term's gradients on a fixed probe
            batch) every N steps into the history (0 = never).
        announce: receives the checks, the teacher's cost before training and before re-ranking.
        overwrite: replace a run already in ``out_dir`` (without it, or ``resume``, an existing run is an error).
        check_images: real data: ``"header"`` (default), ``"full"`` (decode) or ``"skip"`` (see ``preflight``).
    """
    dist = current() if dist is None else dist
    card = card or ws.protocol_card("test", rerank=rerank)
    if out_dir is not None:
        check_run_folder(out_dir, resume=resume, overwrite=overwrite)
    teacher_needed, store_writes = _teacher_use(ws, cfg, controlled, card)
    checks = ws.preflight(("train", "val", card.split), teacher=teacher_needed, store_writes=store_writes,
                          images=check_images)
    for line in checks if announce is not None else ():
        announce(line)
    teacher_scores = _training_scores(ws, cfg, controlled)
    if out_dir is not None and dist.is_main:
        prepare_run_folder(out_dir, resume=resume, overwrite=overwrite)
    dist.barrier()
    if announce is not None:
        announce(_training_cost(cfg, teacher_scores, ws, dist).text())
    torch.manual_seed(cfg.seed)  # the student's initialisation is part of the run's seed
    student = ws.new_student()
    callbacks = tuple(callbacks) + _probe_callbacks(cfg, ws, teacher_scores, student, probe_every)
    before = _stats(teacher_scores)
    start = time.time()
    state = fit(cfg, ws.data, student, teacher_scores=teacher_scores, evaluate=ws.val_evaluator(), out_dir=out_dir,
                resume=resume, progress=progress, step_callbacks=step_callbacks, callbacks=callbacks, dist=dist)
    seconds = time.time() - start
    metrics = ws.evaluate(student, card, announce=announce) | {"train_seconds": seconds}
    if before is not None:
        teacher_scores.flush()  # the run's new scores reach the file (one transaction) before it counts as done
        metrics["teacher_store"] = asdict(teacher_scores.stats - before)
    if out_dir is not None and dist.is_main:
        write_run(Path(out_dir), run_config(ws, cfg, student, controlled, dist), state.history, metrics)
    return metrics


@dataclass(frozen=True)
class RunSpec:
    """One run of :func:`train_runs_batched` (the arguments :func:`train_run` takes besides the workspace).

    Attributes:
        cfg: its config; out_dir: its run folder (None: not written); rerank: evaluate the teacher re-ranking it;
        controlled: distil from a controlled teacher with these settings; probe_every: gradient-coordination probe
        period (0 = off); name: how logs name it. (:class:`~workbench.experiments.parallel.Job` has these fields.)
    """

    cfg: FitConfig
    out_dir: str | Path | None = None
    rerank: bool = False
    controlled: dict | None = None
    probe_every: int = 0
    name: str = ""


def train_runs_batched(ws: Workspace, specs: Sequence[Any], *, progress=None, step_callbacks=(),
                       callbacks=(), log: Callable[[str], None] | None = None, overwrite: bool = False
                       ) -> list[dict[str, Any]]:
    """Train several runs as one batched model (:func:`~workbench.training.batched.fit_batched`): each is
    initialised, trained, evaluated and written exactly as :func:`train_run` would do it alone, but the encoders,
    the optimiser and the teacher's scoring are shared. Returns each run's metrics (in ``specs``' order).

    The runs must share ``steps``, ``batch``, ``lr``, ``warmup``, ``weight_decay``, ``device`` and ``amp``
    (:data:`~workbench.training.batched.GROUP_FIELDS`). ``metrics.json`` records the batch (``batched``: members,
    this run's index, the batch's wall time) and, for a run that diverged, ``diverged`` (step, reason).

    Args:
        specs: :class:`RunSpec` (or anything with its fields, e.g. a ``parallel.Job``).
        progress: wraps the step range; step_callbacks: ``cb(step, rows)`` per step (one row per run, None for a
            stopped one); callbacks: ``cb(step, row)`` after each logged row of every run.
        log: receives a line when a run diverges.
        overwrite: replace runs already in the members' folders (without it an existing run is an error).

    Before the first step every member's folder, the data it reads and the store it writes are checked, as
    :func:`train_run` does.
    """
    _preflight_batch(ws, specs, overwrite)
    members, scores = [], []
    for i, spec in enumerate(specs):
        cfg = spec.cfg
        teacher_scores = _training_scores(ws, cfg, spec.controlled)
        torch.manual_seed(cfg.seed)  # the student's initialisation is part of the run's seed, as in train_run
        student = ws.new_student()
        probes = _probe_callbacks(cfg, ws, teacher_scores, student, spec.probe_every)
        name = getattr(spec, "name", "") or (Path(spec.out_dir).name if spec.out_dir else f"run{i}")
        members.append(Member(cfg, student, teacher_scores, ws.val_evaluator(), spec.out_dir,
                              tuple(callbacks) + probes, name))
        scores.append(teacher_scores)
    stores = {id(s): s for s in scores if _stats(s) is not None}
    before = {k: s.stats for k, s in stores.items()}
    batched = fit_batched(members, ws.data, step_callbacks=step_callbacks, progress=progress, log=log)
    for s in stores.values():
        s.flush()
    out = []
    for i, (spec, member, state) in enumerate(zip(specs, members, batched.states, strict=True)):
        card = ws.protocol_card("test", rerank=spec.rerank)
        metrics = ws.evaluate(member.student, card) | {"train_seconds": batched.seconds}
        metrics["batched"] = {"members": len(members), "member": i, "wall_seconds": batched.seconds}
        if id(scores[i]) in stores:  # the store is shared: its counters cover the whole batch
            metrics["teacher_store"] = asdict(scores[i].stats - before[id(scores[i])])
        if i in batched.diverged:
            metrics["diverged"] = batched.diverged[i]
        if spec.out_dir is not None:
            write_run(Path(spec.out_dir), run_config(ws, spec.cfg, member.student, spec.controlled), state.history,
                      metrics)
        out.append(metrics)
    return out


def _preflight_batch(ws: Workspace, specs: Sequence[Any], overwrite: bool) -> None:
    """Check every member's run folder and what the batch reads and writes, then prepare the folders."""
    folders = [spec.out_dir for spec in specs if spec.out_dir is not None]
    for folder in folders:
        check_run_folder(folder, resume=False, overwrite=overwrite)
    uses = [_teacher_use(ws, spec.cfg, spec.controlled, ws.protocol_card("test", rerank=spec.rerank))
            for spec in specs]
    ws.preflight(("train", "val", "test"), teacher=any(t for t, _ in uses), store_writes=any(w for _, w in uses))
    for folder in folders:
        prepare_run_folder(folder, resume=False, overwrite=overwrite)


def _teacher_use(ws: Workspace, cfg: FitConfig, controlled: dict | None, card: ProtocolCard) -> tuple[bool, bool]:
    """(whether a run needs the teacher, whether it writes to the store): training from the trained teacher, or
    re-ranking under ``card`` (which writes to the store where the workspace re-ranks through it)."""
    trains = needs_teacher(cfg) and controlled is None
    return trains or card.k_test is not None, trains or (card.k_test is not None and ws.rerank_uses_store)


def _stats(scores: Any) -> StoreStats | None:
    """The counters of store-like teacher scores (the store, the dense grid), None for others."""
    stats = getattr(scores, "stats", None)
    return stats if isinstance(stats, StoreStats) else None


def _training_scores(ws: Workspace, cfg: FitConfig, controlled: dict | None):
    """The teacher's scores the distillation terms read (``None`` when no term reads a teacher)."""
    if not needs_teacher(cfg):
        return None
    return ws.teacher_scores("train") if controlled is None else ws.controlled_scores(controlled)


def _training_cost(cfg: FitConfig, scores: Any, ws: Workspace, dist: Dist) -> TeacherCost:
    from workbench.evaluation.protocol import training_cost

    if scores is None:
        return TeacherCost("training", ())
    rows = len(scores.store) if isinstance(scores, TeacherScores) and ws.store_path else None
    return training_cost(cfg.steps, cfg.batch, dist.world_size, cfg.k, cfg.negatives, rows)


def _probe_callbacks(cfg: FitConfig, ws: Workspace, teacher_scores, student: Any, every: int) -> tuple:
    if not every or len(cfg.losses) < 2:
        return ()
    from workbench.findings.coordination import CoordinationProbe

    measure = CoordinationProbe(cfg, ws.data, teacher_scores).callback(student)

    def callback(step: int, row: dict) -> None:
        if step % every == 0 or step == cfg.steps:
            measure(step, row)

    return (callback,)


def run_config(ws: Workspace, cfg: FitConfig, student: Any, controlled: dict | None = None,
               dist: Dist | None = None) -> dict[str, Any]:
    """The ``config.json`` of a run: what was trained, on which data, from which teacher."""
    config = getattr(student, "config_dict", dict)()
    return {"fit": cfg.to_dict(), "data": ws.describe(), "student": config, "controlled_teacher": controlled,
            "processes": (dist or current()).world_size}


RUN_FILES = ("config.json", "history.json", "metrics.json", "checkpoint", "checkpoint.new", "checkpoint.old")
"""What a run writes in its folder (besides ``metrics_<split>.json`` / ``eval_<split>.json`` and temporaries)."""


def run_entries(out: str | Path) -> list[Path]:
    """The entries of folder ``out`` that belong to a run (``[]`` when it is absent or holds none)."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name in RUN_FILES or p.name.endswith(TEMP_SUFFIX)
                  or (p.suffix == ".json" and p.name.startswith(("metrics_", "eval_"))))


def check_run_folder(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Raise ``ValueError`` naming the fix unless ``out`` can take this run; creates nothing.

    ``out`` must be a folder (or creatable as one) that this process can write; a run already there needs
    ``resume`` (which needs its checkpoint) or ``overwrite``.
    """
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; a run needs a folder (a new path, or a run folder with --resume)")
    existing = next(p for p in (out, *out.parents) if p.exists())  # "." or "/" at the latest
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"--out {out} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} cannot be written: {existing} is read-only for this user; choose a "
                         "writable folder")
    if resume:
        if not checkpoint_exists(out / "checkpoint"):
            raise ValueError(f"--resume: {out} holds no checkpoint to continue ({out / 'checkpoint'} is missing); "
                             "drop --resume to start a new run there")
        return
    entries = run_entries(out)
    if entries and not overwrite:
        raise ValueError(f"--out {out} already holds a run ({', '.join(p.name for p in entries)}): pass --resume "
                         "(resume=True) to continue it, --overwrite (overwrite=True) to replace it, or choose another "
                         "folder")


def prepare_run_folder(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Check ``out`` (:func:`check_run_folder`), then create it; ``overwrite`` first deletes the run there (only
    the run's own files); leftover temporaries of interrupted writes are removed. Returns the folder."""
    out = Path(out)
    check_run_folder(out, resume=resume, overwrite=overwrite)
    for entry in run_entries(out) if overwrite else ():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)
    return out


def write_run(out: Path, config: dict[str, Any], history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """Write a run folder's three JSON files (each atomically; ``metrics.json`` last marks the run finished)."""
    write_json(out / "config.json", config)
    write_json(out / "history.json", history)
    write_json(out / "metrics.json", metrics)


def load_run(out_dir: str | Path) -> dict[str, Any]:
    """config, history and metrics of a finished student run folder."""
    out = Path(out_dir)
    return {name: read_json(out / f"{name}.json", what=f"run {name}") for name in ("config", "history", "metrics")}


# ----------------------------------------------------------------------------------------------- the store fill


def mined_pairs(student: Any, split: Any, top: int, positives: str = "coco") -> dict[str, tuple[torch.Tensor, ...]]:
    """Each query's top-``top`` non-positive candidates by ``student``, both directions:
    ``{"i2t"|"t2i": (image idx long [P], caption idx long [P])}`` (split indices, CPU)."""
    img, txt = (e.float().cpu() for e in embed_split(student, split))
    relation = split.relations()[positives]
    out = {}
    for direction, (q, c) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        mined = mine_hard_negatives(q, c, top, positives=relation_exclude(relation, direction))
        rows = torch.arange(len(q))[:, None].expand_as(mined.indices)
        keep = mined.valid.flatten()
        pairs = (rows.flatten()[keep], mined.indices.flatten()[keep])
        out[direction] = pairs if direction == "i2t" else pairs[::-1]
    return out


def fill_store(ws: Workspace, student: Any, split: str = "train", top: int = 16, *, positives: str = "coco",
               announce: Announce | None = None, dist: Dist | None = None) -> dict[str, Any]:
    """Score each query's top-``top`` student candidates (both directions, ``positives`` excluded) into the store, so
    that distillation runs mining with the same positives mostly hit it. Ranks share the work (each scores a slice
    of each direction's pairs into the shared store file)."""
    dist = current() if dist is None else dist
    if getattr(ws, "uses_dense_teacher", lambda s: False)(split):
        return {"pairs": 0, "computed_pairs": 0, "hit_rate": float("nan"), "dense": True}  # every pair is scored
    data = ws.split(split)
    pairs = mined_pairs(student, data, top, positives)
    scores = ws.teacher_scores(split)
    if announce is not None:
        terms = (("i2t", data.num_images, top), ("t2i", data.num_captions, top))
        img, cap = (torch.cat([p[k] for p in pairs.values()]) for k in (0, 1))
        announce(exact_cost("store fill", terms, scores, img, cap).text())
    before = scores.stats
    for direction, (img, cap) in pairs.items():
        rows = dist.shard(len(img))
        scores(img[rows.start : rows.stop], cap[rows.start : rows.stop])
        if announce is not None:
            announce(f"store      fill {direction}: {scores.stats.postfix()}")
    scores.flush()
    dist.barrier()
    stats = scores.stats - before
    return {"pairs": sum(len(p[0]) for p in pairs.values()), "computed_pairs": stats.computed_pairs,
            "hit_rate": stats.hit_rate}


def rerank_cost(scores: TeacherScores, img: torch.Tensor, txt: torch.Tensor, k_test: int) -> TeacherCost:
    """The exact teacher bill of re-ranking: both directions' top-``k_test`` pairs less those already stored."""
    pairs = []
    for direction, query, gallery in (("i2t", img, txt), ("t2i", txt, img)):
        idx = topk_similarity(query, gallery, k_test)[1].cpu()
        q = torch.arange(len(query))[:, None].expand_as(idx).reshape(-1)
        pairs.append((q, idx.reshape(-1)) if direction == "i2t" else (idx.reshape(-1), q))
    terms = (("i2t", len(img), k_test), ("t2i", len(txt), k_test))
    return exact_cost("re-ranking", terms, scores, torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))


def exact_cost(task: str, terms, scores: TeacherScores, img: torch.Tensor, cap: torch.Tensor) -> TeacherCost:
    """The cost of scoring the pairs ``(img [P], cap [P])`` (split indices), duplicates and store hits known."""
    keys = torch.unique(img.cpu() * scores.split.num_captions + cap.cpu())
    i, c = keys // scores.split.num_captions, keys % scores.split.num_captions
    stored = int(scores.stored(i, c).sum())
    return TeacherCost(task, terms, distinct=len(keys), stored=stored, exact=True, store_rows=len(scores.store))


# --------------------------------------------------------------------------------------------------- the teacher


def train_teacher_run(world_cfg: WorldConfig, train_cfg: TeacherTrainConfig, teacher_cfg: TeacherConfig,
                      out_dir: str | Path, progress=None, callbacks=(), device: str = "auto") -> dict[str, Any]:
    """Pretrain the stem, train the teacher, evaluate it on val/test minimal pairs; write a teacher checkpoint."""
    from workbench.data.nearmiss import build_near_misses

    start = time.time()
    world = build_world(world_cfg)
    stem = pretrain_stem(world.train, seed=train_cfg.seed)
    model = CrossEncoder(teacher_cfg, stem=stem).to(pick_device(device))
    val_pairs = minimal_pairs(world.val, per_kind=300)

    def evaluate(m: CrossEncoder) -> dict[str, float]:
        return {f"val_mp_{k}": v for k, v in evaluate_teacher(m, world.val, val_pairs)["minimal_pairs"].items()}

    history = train_teacher(model, world.train, build_near_misses(world.train, seed=train_cfg.seed), train_cfg,
                            evaluate=evaluate, callbacks=callbacks, progress=progress)
    test = evaluate_teacher(model, world.test, minimal_pairs(world.test, per_kind=500), graded_pairs(world.test))
    seconds = time.time() - start
    model.cpu()
    metrics = {"test": test, "stem": stem_accuracy(stem, world.test), "train_seconds": seconds,
               "device": str(pick_device(device))}
    out = Path(out_dir)
    extra = {"world": asdict(world_cfg), "training": asdict(train_cfg), "metrics": metrics}
    save_checkpoint(out, "teacher", model.config_dict(), model.state_dict(), extra)
    write_json(out / "history.json", history)
    write_json(out / "metrics.json", metrics)
    return metrics


def finished_run(run: Path, ws: Workspace, cfg: FitConfig) -> bool:
    """True when ``run`` holds a finished run of ``cfg`` on ``ws``'s data (``config.json``'s fit and data match)."""
    if not (run / "metrics.json").is_file() or not (run / "config.json").is_file():
        return False
    recorded = read_json(run / "config.json", what="run config")
    wanted = json.loads(json.dumps({"fit": cfg.to_dict(), "data": ws.describe()}))
    return recorded.get("fit") == wanted["fit"] and recorded.get("data") == wanted["data"]


def ensure_students(ws: Workspace, configs: Mapping[str, FitConfig], out_dir: str | Path, *,
                    log: Callable[[str], None] = print) -> dict[str, Path]:
    """Checkpoint folder of a student trained with each config: ``out_dir/<name>/checkpoint``.

    A run already in ``out_dir/<name>`` with the same fit config and data is reused; any other is trained now with
    :func:`train_run` (no teacher re-ranking), overwriting what was there.

    Args:
        ws: the workspace.
        configs: ``{name: FitConfig}``.
        out_dir: the folder holding one run folder per name.
        log: receives one line per student.
    """
    found = {}
    for name, cfg in configs.items():
        run = Path(out_dir) / name
        if finished_run(run, ws, cfg):
            log(f"{name}: reusing {run}")
        else:
            terms = " + ".join(t.name for t in cfg.losses)
            log(f"{name}: training {terms} for {cfg.steps} steps -> {run}")
            train_run(ws, cfg, run, rerank=False, overwrite=True)
        found[name] = run / "checkpoint"
    return found
