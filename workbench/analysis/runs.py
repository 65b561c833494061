"""Run orchestration shared by the CLI, the demo and the notebooks: build the world, load the teacher, train and
evaluate students and teachers, and write each run's files.

A student run folder holds ``config.json`` (fit, world and teacher settings), ``history.json``, ``metrics.json``
(test metrics; ``rsum`` = semantic RSUM) and ``checkpoint/`` (safetensors + trainer state).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.analysis.evaluate import evaluate_student, evaluate_teacher, graded_pairs
from workbench.data.world import MinimalPairs, World, WorldConfig, build_world, minimal_pairs
from workbench.device import pick_device
from workbench.io import CheckpointError, read_json, save_checkpoint, write_json
from workbench.models.stem import PatchStem
from workbench.models.student import DualEncoder, StudentConfig
from workbench.models.teacher import CrossEncoder, TeacherConfig, load_teacher
from workbench.scores.teacher_scores import TeacherScores
from workbench.training.config import FitConfig
from workbench.training.loop import fit, needs_teacher
from workbench.training.stem import pretrain_stem, stem_accuracy
from workbench.training.teacher import TeacherTrainConfig, train_teacher

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_TEACHER = ASSETS / "teacher"
WORLD_PRESETS = {"smoke": WorldConfig(n_train=400, n_val=100, n_test=200), "default": WorldConfig()}


def world_namespace(cfg: WorldConfig) -> str:
    """Store namespace of a world: ids are only unique within one world config."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return f"world-{digest}"


@dataclass
class Workspace:
    """A world with its teacher, the shared stem, and cached evaluation sets."""

    world: World
    teacher: CrossEncoder | None
    stem: PatchStem
    store_path: Path | None = None
    teacher_dir: Path | None = None
    _eval_sets: dict[str, Any] = field(default_factory=dict)
    _scores: dict[str, TeacherScores] = field(default_factory=dict)

    def eval_sets(self, split: str) -> tuple[MinimalPairs, tuple[torch.Tensor, torch.Tensor]]:
        """(minimal pairs, graded pairs) of a split, built once."""
        if split not in self._eval_sets:
            s = self.world.split(split)
            self._eval_sets[split] = (minimal_pairs(s, per_kind=500), graded_pairs(s))
        return self._eval_sets[split]

    def teacher_scores(self, split: str = "train") -> TeacherScores:
        """The teacher's scores on a split through the store: one instance per split, kept open for the workspace's
        life, so its in-memory cache (and the teacher's cached encodings) serve every run of this process."""
        if self.teacher is None:
            raise ValueError("this workspace has no teacher: pass --teacher DIR (a train-teacher output folder)")
        if split not in self._scores:
            self._scores[split] = TeacherScores(self.teacher, self.world.split(split), self.store_path,
                                                world_namespace(self.world.config))
        return self._scores[split]

    def close(self) -> None:
        """Close the store connections this workspace opened."""
        for scores in self._scores.values():
            scores.close()
        self._scores.clear()

    def new_student(self, config: StudentConfig | None = None) -> DualEncoder:
        """A fresh student sharing the frozen stem (a CPU copy: the student moves to its device when it trains)."""
        return DualEncoder(config or StudentConfig(), stem=copy.deepcopy(self.stem).cpu())


def open_workspace(world_cfg: WorldConfig | None = None, teacher_dir: str | Path | None = DEFAULT_TEACHER,
                   store_path: str | Path | None = None, device: str = "auto") -> Workspace:
    """Build the world and load the teacher (its stem is shared with students); no teacher -> pretrain a stem.

    The teacher goes to ``device`` (CUDA when available for ``"auto"``); students move there when they train.
    """
    world = build_world(world_cfg or WorldConfig())
    teacher = None
    if teacher_dir is not None:
        if not (Path(teacher_dir) / "config.json").is_file():
            raise CheckpointError(
                f"no teacher checkpoint in {teacher_dir}: train one with `python -m workbench train-teacher --out DIR`"
            )
        teacher = load_teacher(teacher_dir).to(pick_device(device))
    stem = teacher.stem if teacher is not None else pretrain_stem(world.train)
    return Workspace(world, teacher, stem, Path(store_path) if store_path else None,
                     Path(teacher_dir) if teacher_dir else None)


def student_metrics(ws: Workspace, student: DualEncoder, split: str = "test", rerank: bool = True,
                    k_test: int = 16) -> dict[str, Any]:
    """Test metrics of a student (+ the teacher re-ranking its top-k_test when asked and a teacher is loaded)."""
    minimal, graded = ws.eval_sets(split)
    out = evaluate_student(student, ws.world.split(split), teacher=ws.teacher if rerank else None, k_test=k_test,
                           minimal=minimal, graded=graded)
    out["rsum"] = out["retrieval"]["semantic"]["rsum"]
    return out


def val_retrieval(ws: Workspace):
    """An ``evaluate`` callback for ``fit``: semantic and COCO R@1 / RSUM on the validation split."""
    from workbench.analysis.evaluate import embed_split
    from workbench.analysis.retrieval import retrieval_metrics

    split = ws.world.val
    relations = split.relations()

    def evaluate(student: DualEncoder) -> dict[str, float]:
        img, txt = embed_split(student, split)
        m = retrieval_metrics(img.float().cpu(), txt.float().cpu(), relations)
        return {f"val_{p}_{k}": m[p][k] for p in m for k in ("r1_i2t", "r1_t2i", "rsum")}

    return evaluate


def train_student_run(ws: Workspace, cfg: FitConfig, out_dir: str | Path | None, *, rerank: bool = True,
                      resume: bool = False, progress=None, step_callbacks=(), callbacks=(),
                      controlled: dict | None = None, probe_every: int = 0) -> dict[str, Any]:
    """Train one student and evaluate it on the test split; write the run folder when ``out_dir`` is given.

    Args:
        controlled: settings of a :class:`~workbench.models.controlled.ControlledTeacher` to distil from instead
            of the trained teacher (a control experiment; recorded in config.json).
        probe_every: measure gradient coordination (cosine of ITC's and each term's gradients on a fixed probe
            batch) every N steps into the history (0 = never).
    """
    teacher_scores = None
    if needs_teacher(cfg):
        teacher_scores = ws.teacher_scores() if controlled is None else _controlled_scores(ws, controlled)
    torch.manual_seed(cfg.seed)  # the student's initialisation is part of the run's seed
    student = ws.new_student()
    callbacks = tuple(callbacks) + _probe_callbacks(cfg, ws, teacher_scores, student, probe_every)
    start = time.time()
    before = teacher_scores.stats if isinstance(teacher_scores, TeacherScores) else None
    state = fit(cfg, ws.world, student, teacher_scores=teacher_scores, evaluate=val_retrieval(ws), out_dir=out_dir,
                resume=resume, progress=progress, step_callbacks=step_callbacks, callbacks=callbacks)
    seconds = time.time() - start
    metrics = student_metrics(ws, student, rerank=rerank) | {"train_seconds": seconds}
    if before is not None:
        metrics["teacher_store"] = asdict(teacher_scores.stats - before)
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "config.json", run_config(ws, cfg) | {"controlled_teacher": controlled})
        write_json(out / "history.json", state.history)
        write_json(out / "metrics.json", metrics)
    return metrics


def _controlled_scores(ws: Workspace, settings: dict):
    from workbench.models.controlled import ControlledConfig, ControlledTeacher

    return ControlledTeacher(ws.world.train, ControlledConfig(**settings)).scores


def _probe_callbacks(cfg: FitConfig, ws: Workspace, teacher_scores, student, every: int) -> tuple:
    if not every or len(cfg.losses) < 2:
        return ()
    from workbench.analysis.coordination import CoordinationProbe

    probe = CoordinationProbe(cfg, ws.world, teacher_scores)
    measure = probe.callback(student)

    def callback(step: int, row: dict) -> None:
        if step % every == 0 or step == cfg.steps:
            measure(step, row)

    return (callback,)


def run_config(ws: Workspace, cfg: FitConfig) -> dict[str, Any]:
    return {"fit": cfg.to_dict(), "world": asdict(ws.world.config),
            "teacher": str(ws.teacher_dir) if ws.teacher_dir else None,
            "student": asdict(StudentConfig()), "store": str(ws.store_path) if ws.store_path else None}


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


def load_run(out_dir: str | Path) -> dict[str, Any]:
    """config, history and metrics of a finished student run folder."""
    out = Path(out_dir)
    return {name: read_json(out / f"{name}.json", what=f"run {name}") for name in ("config", "history", "metrics")}


def prefill_store(ws: Workspace, student: DualEncoder, split: str = "train", top: int = 8,
                  positives: str = "semantic", log=print) -> None:
    """Score each query's top-``top`` student candidates (both directions) into the store ahead of training.

    Distillation runs that mine with the same positives (``"semantic"`` or ``"coco"``) then mostly hit the store.
    """
    from workbench.analysis.evaluate import embed_split
    from workbench.scores.mining import mine_hard_negatives, relation_exclude

    data = ws.world.split(split)
    scores = ws.teacher_scores(split)
    img, txt = (e.float().cpu() for e in embed_split(student, data))
    relation = data.relations()[positives]
    for direction, (q, c) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        mined = mine_hard_negatives(q, c, top, positives=relation_exclude(relation, direction))
        rows = torch.arange(len(q))[:, None].expand_as(mined.indices)
        pairs = (rows, mined.indices) if direction == "i2t" else (mined.indices, rows)
        keep = mined.valid.flatten()
        scores(pairs[0].flatten()[keep], pairs[1].flatten()[keep])
        log(f"[store] prefill {direction}: {scores.stats.postfix()}")
