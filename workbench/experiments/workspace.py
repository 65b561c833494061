"""The workspace: one interface to the data, the teacher, fresh students, the teacher-score store and evaluation,
for the built-in world and for Karpathy-format real data alike.

    ws = open_workspace()                                                     # built-in world + committed teacher
    ws = open_karpathy_workspace("flickr30k", "data/dataset_flickr30k.json", "data/flickr30k-images",
                                 store="runs/teacher_scores.sqlite")          # BLIP ITM teacher, CLIP student
    card = ws.protocol_card("test")                                           # what the numbers will mean
    metrics = ws.evaluate(ws.new_student(), card)

Training, store filling, the CLI and the notebooks go through this interface only (:mod:`workbench.experiments.runs`),
so every run folder has one format whichever data it used. What differs between the two kinds of data lives here:

- :class:`BuiltinWorkspace`: the generated :class:`~workbench.data.world.World`, the built-in cross-encoder teacher
  (its frozen stem is shared with every student), ground-truth extras in evaluation (minimal pairs, graded
  Spearman, the semantic protocol), teacher re-ranking by the teacher's own pair scorer;
- :class:`~workbench.experiments.karpathy.KarpathyWorkspace` (module ``karpathy``): a Karpathy JSON + image
  folder, a BLIP ITM teacher and a CLIP / BLIP-ITC student from `transformers`, COCO protocol only.

:mod:`workbench.experiments.records` re-opens the workspace a run folder recorded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.checks import check_choice
from workbench.data.perturbations import MinimalPairs, minimal_pairs
from workbench.data.world import WORLD_PRESETS as NAMED_WORLDS
from workbench.data.world import World, WorldConfig, build_world, world_preset
from workbench.device import pick_device
from workbench.evaluation.embed import embed_split
from workbench.evaluation.evaluate import evaluate_student, graded_pairs
from workbench.evaluation.protocol import ProtocolCard, protocol_card
from workbench.evaluation.retrieval import retrieval_metrics
from workbench.io import CheckpointError
from workbench.models.stem import PatchStem
from workbench.models.student import DualEncoder, StudentConfig, student_preset
from workbench.models.teacher import CrossEncoder, load_teacher
from workbench.scores.store import StoreError, read_only_message, store_writable
from workbench.scores.teacher_scores import TeacherScores
from workbench.training.stem import pretrain_stem

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_WORLD = "contrast-chain-v1"
DEFAULT_TEACHER = ASSETS / "teacher"  # the committed teacher of the default world
WORLD_TEACHERS: dict[str, Path] = {  # named world -> the committed teacher trained on it
    "contrast-chain-v1": DEFAULT_TEACHER,
    "ambiguous-v1": ASSETS / "teacher-ambiguous-v1",
}
WORLD_STUDENTS: dict[str, str] = {  # named world -> its default student preset (workbench.models.student)
    "contrast-chain-v1": "moments-v1",
    "ambiguous-v1": "relation-blind-v1",
}
WORLD_PRESETS: dict[str, WorldConfig] = {
    "default": world_preset(DEFAULT_WORLD),  # the default world, full size
    "smoke": world_preset(DEFAULT_WORLD, n_train=400, n_val=100, n_test=200),  # the default world, tiny (tests, CI)
    **NAMED_WORLDS,  # every named world at full size: "ambiguous-v1" (the ablation), "contrast-chain-v1"
}
"""World presets by name (the CLI's ``--world``, the reproduce profiles, the notebooks)."""
DEFAULT_TEACHERS = {"flickr30k": "Salesforce/blip-itm-base-flickr", "coco": "Salesforce/blip-itm-base-coco"}
DEFAULT_STUDENT = "openai/clip-vit-base-patch16"
REAL_FIT_DEFAULTS: dict[str, Any] = {"positives": "coco", "lr": 1e-5, "warmup": 100, "weight_decay": 0.1}
"""FitConfig fields whose built-in defaults do not suit fine-tuning a pretrained model on real data (the CLI uses
these unless given): COCO positives (a caption matches its own image), CLIP-style fine-tuning learning rate."""

Announce = Callable[[str], None]
IMAGE_CHECKS = ("header", "full", "skip")
"""How a real-data run checks its images before the first step (see :meth:`Workspace.preflight`)."""
STUDENT_MODEL_TYPES = {"clip": "clip", "blip_itc": "blip"}


_SIZE_FIELDS = ("seed", "n_train", "n_val", "n_test")


def world_name(cfg: WorldConfig) -> str | None:
    """The named world (:data:`workbench.data.world.WORLD_PRESETS`) ``cfg`` is, whatever its seed and split sizes;
    ``None`` for a world that is none of them."""
    def kind(c: WorldConfig) -> dict:
        return {k: v for k, v in asdict(c).items() if k not in _SIZE_FIELDS}

    return next((name for name, named in NAMED_WORLDS.items() if kind(named) == kind(cfg)), None)


def teacher_for_world(cfg: WorldConfig) -> Path:
    """The committed teacher of a world: the one trained on its named world (:data:`WORLD_TEACHERS`); a world that
    is no named one gets the teacher of the named world with its caption style (chains: the default teacher)."""
    name = world_name(cfg)
    if name is None:
        name = DEFAULT_WORLD if cfg.caption_style == "chain" else "ambiguous-v1"
    return WORLD_TEACHERS[name]


def student_for_world(cfg: WorldConfig) -> str:
    """The default student preset of a world (:data:`WORLD_STUDENTS`): the relation-capable ``moments-v1`` on
    chain-caption worlds, the original ``relation-blind-v1`` on the ambiguous-v1 world."""
    name = world_name(cfg)
    if name is None:
        name = DEFAULT_WORLD if cfg.caption_style == "chain" else "ambiguous-v1"
    return WORLD_STUDENTS[name]


def world_namespace(cfg: WorldConfig) -> str:
    """Store namespace of a world: ids are only unique within one world config."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return f"world-{digest}"


class Workspace:
    """What every workspace offers (the built-in and Karpathy ones below implement it).

    Attributes:
        kind: ``"builtin"`` or ``"karpathy"`` (recorded in every run's ``config.json``).
        dataset: the protocol-card dataset name (``"builtin"``, ``"flickr30k"``, ``"coco"``).
        data: has ``train`` / ``val`` / ``test`` splits and ``split(name)``; ``fit`` reads ``data.train``.
        store_path: the persistent teacher-score store (``None``: scores live in this process only).
        primary: the protocol whose RSUM is a run's headline number (``metrics["rsum"]``).
        rerank_uses_store: whether teacher re-ranking reads and writes the store.
    """

    kind: str
    dataset: str
    data: Any
    store_path: Path | None
    primary: str
    rerank_uses_store: bool
    _scores: dict[str, TeacherScores]

    # --- data, models, store ------------------------------------------------------------------------------------

    def split(self, name: str) -> Any:
        """The split ``name`` ("train" | "val" | "test")."""
        check_choice("split", name, ["train", "val", "test"])
        return self.data.split(name)

    @property
    def teacher(self) -> Any:
        raise NotImplementedError

    @property
    def namespace(self) -> str:
        """The store's id space for this data."""
        raise NotImplementedError

    def new_student(self) -> Any:
        raise NotImplementedError

    def teacher_scores(self, split: str = "train") -> TeacherScores:
        """The teacher's scores on a split through the store: one instance per split, kept open for the workspace's
        life, so its in-memory cache (and the teacher's cached encodings) serve every run of this process."""
        if split not in self._scores:
            self._scores[split] = TeacherScores(self.teacher, self.split(split), self.store_path, self.namespace,
                                                **self._scorer_options(split))
        return self._scores[split]

    def _scorer_options(self, split: str) -> dict[str, Any]:
        return {}

    def preflight(self, splits: Sequence[str], *, teacher: bool, store_writes: bool,
                  images: str = "header") -> list[str]:
        """Check what a run will read and write before its first step, so that it cannot fail after training:
        the teacher (when ``teacher``), the student's source, the data of ``splits`` and, when ``store_writes``,
        that the store can be written. Returns lines saying what was checked and what was skipped.

        Args:
            images: real data: open every image's header (``"header"``), decode every image (``"full"``), or
                only check that the files exist (``"skip"``).

        Raises:
            ValueError / OSError / StoreError: naming what is wrong and where.
        """
        check_choice("images", images, IMAGE_CHECKS)
        if teacher:
            self._check_teacher()
        if store_writes and self.store_path is not None and not store_writable(self.store_path):
            raise StoreError(read_only_message(self.store_path, "this run"))
        return self._check_data(list(dict.fromkeys(splits)), images)

    def _check_teacher(self) -> None:
        raise NotImplementedError

    def _check_data(self, splits: list[str], images: str) -> list[str]:
        for name in splits:
            self.split(name)
        return []

    def controlled_scores(self, settings: dict[str, Any]) -> Callable:
        """A ground-truth teacher's scores (a control; built-in world only)."""
        raise ValueError(f"a controlled teacher needs the built-in world's ground truth; this is {self.dataset!r}")

    def close(self) -> None:
        """Close the store connections this workspace opened."""
        for scores in self._scores.values():
            scores.close()
        self._scores.clear()

    def describe(self) -> dict[str, Any]:
        """Where the data, teacher and store come from (``config.json["data"]`` of every run)."""
        raise NotImplementedError

    # --- evaluation ---------------------------------------------------------------------------------------------

    def protocol_card(self, split: str = "test", *, k_test: int | None = None, rerank: bool = True,
                      fusion: str = "itm") -> ProtocolCard:
        """What a retrieval result on ``split`` means (split, cut-offs, re-ranking ``k_test``, fusion)."""
        return protocol_card(self.dataset, self.split(split), k_test=k_test, rerank=rerank, fusion=fusion)

    def evaluate(self, student: Any, card: ProtocolCard, *, announce: Announce | None = None,
                 progress: bool = False) -> dict[str, Any]:
        """Every metric of ``student`` under ``card``: retrieval in each protocol, the teacher re-ranking its top
        ``card.k_test`` (when the card has one), and the world's extras (built-in). ``announce(text)`` receives the
        teacher's exact cost before it runs (store-backed re-ranking)."""
        split = self.split(card.split)
        img, txt = embed_split(student, split, progress=progress)
        scorer, stats = self._rerank_scorer(card, img, txt, announce)
        out = evaluate_student(student, split, k_test=card.k_test or 1, fusion=card.fusion, pair_scorer=scorer,
                               ks=card.ks, progress=progress, embeddings=(img, txt), **self._extras(card.split))
        out["protocol"] = card.to_dict()
        out["rsum"] = out["retrieval"][self.primary]["rsum"]
        if stats is not None:
            out["rerank_store"] = asdict(stats())
        return out

    def _rerank_scorer(self, card: ProtocolCard, img: torch.Tensor, txt: torch.Tensor,
                       announce: Announce | None) -> tuple[Callable | None, Callable | None]:
        """(the pair scorer re-ranking uses or None, a function giving its store statistics or None)."""
        raise NotImplementedError

    def _extras(self, split: str) -> dict[str, Any]:
        """Extra evaluation sets of ``evaluate_student`` (minimal pairs, graded pairs) for ``split``."""
        return {}

    def val_evaluator(self) -> Callable[[Any], dict[str, float]]:
        """An ``evaluate`` callback for ``fit``: R@1 and RSUM on the validation split, in every protocol."""
        split = self.split("val")
        card = self.protocol_card("val", rerank=False)

        def evaluate(student: Any) -> dict[str, float]:
            img, txt = embed_split(student, split)
            m = retrieval_metrics(img.float().cpu(), txt.float().cpu(), split.relations(), ks=card.ks)
            return {f"val_{p}_{k}": v for p in m for k, v in m[p].items() if k.startswith("r1_") or k == "rsum"}

        return evaluate


# ---------------------------------------------------------------------------------------------- built-in world


@dataclass
class BuiltinWorkspace(Workspace):
    """The built-in world with its teacher, the shared frozen stem, and cached evaluation sets."""

    world: World
    teacher_model: CrossEncoder | None
    stem: PatchStem
    store_path: Path | None = None
    teacher_dir: Path | None = None
    dense_teacher: bool | None = None  # None: $WORKBENCH_DENSE_TEACHER (1 / 0 / auto); auto = teacher on a GPU
    student: StudentConfig | None = None  # None: the world's default student (student_for_world), set on init
    _eval_sets: dict[str, Any] = field(default_factory=dict, repr=False)
    _scores: dict[str, TeacherScores] = field(default_factory=dict, repr=False)

    kind = "builtin"
    dataset = "builtin"
    primary = "semantic"
    rerank_uses_store = False  # the teacher's own pair scorer re-ranks

    def __post_init__(self) -> None:
        if self.student is None:
            self.student = student_preset(student_for_world(self.world.config))

    @property
    def data(self) -> World:
        return self.world

    @property
    def teacher(self) -> CrossEncoder:
        if self.teacher_model is None:
            raise ValueError("this workspace has no teacher: pass --teacher DIR (a train-teacher output folder)")
        return self.teacher_model

    @property
    def namespace(self) -> str:
        return world_namespace(self.world.config)

    def new_student(self, config: StudentConfig | None = None) -> DualEncoder:
        """A fresh student sharing the frozen stem (a CPU copy: the student moves to its device when it trains).

        The default config is the workspace's ``student`` (:func:`student_for_world` unless one was chosen).
        """
        config = config or self.student
        return DualEncoder(config, stem=copy.deepcopy(self.stem).cpu())

    def controlled_scores(self, settings: dict[str, Any]) -> Callable:
        from workbench.models.controlled import ControlledConfig, ControlledTeacher

        return ControlledTeacher(self.world.train, ControlledConfig(**settings)).scores

    def uses_dense_teacher(self, split: str = "train") -> bool:
        """Whether :meth:`teacher_scores` of the training split is the dense grid (:class:`DenseTeacherScores`):
        ``dense_teacher`` if set, else ``$WORKBENCH_DENSE_TEACHER`` (``1`` / ``0`` / ``auto``), where auto = the
        teacher runs on a GPU (there the grid is scored in about a minute; on a CPU it would take hours)."""
        if split != "train" or self.teacher_model is None:
            return False
        choice = self.dense_teacher
        if choice is None:
            env = os.environ.get("WORKBENCH_DENSE_TEACHER", "auto").strip().lower()
            check_choice("WORKBENCH_DENSE_TEACHER", env, ["1", "0", "auto", "true", "false"])
            choice = None if env == "auto" else env in ("1", "true")
        if choice is None:
            choice = next(self.teacher_model.parameters()).device.type == "cuda"
        return bool(choice)

    def teacher_scores(self, split: str = "train"):
        """The teacher's scores on a split: the dense grid on the device (:meth:`uses_dense_teacher`) or the store."""
        if self.uses_dense_teacher(split) and split not in self._scores:
            from workbench.scores.dense import DenseTeacherScores

            self._scores[split] = DenseTeacherScores(self.teacher, self.split(split))
        return super().teacher_scores(split)

    def eval_sets(self, split: str) -> tuple[MinimalPairs, tuple[torch.Tensor, torch.Tensor]]:
        """(minimal pairs, graded pairs) of a split, built once."""
        if split not in self._eval_sets:
            s = self.split(split)
            self._eval_sets[split] = (minimal_pairs(s, per_kind=500), graded_pairs(s))
        return self._eval_sets[split]

    def _check_teacher(self) -> None:
        self.teacher  # noqa: B018  (raises, naming the fix, when this workspace has no teacher)

    def _extras(self, split: str) -> dict[str, Any]:
        minimal, graded = self.eval_sets(split)
        return {"minimal": minimal, "graded": graded}

    def _rerank_scorer(self, card, img, txt, announce):
        if card.k_test is None or self.teacher_model is None:
            return None, None
        return self.teacher_model.pair_scorer(self.split(card.split)), None

    def protocol_card(self, split: str = "test", *, k_test: int | None = None, rerank: bool = True,
                      fusion: str = "itm") -> ProtocolCard:
        if fusion != "itm":
            raise ValueError("--fusion itm+itc is available for real data (--dataset flickr30k|coco); the built-in "
                             "world re-ranks by the teacher's ITM logit alone")
        return super().protocol_card(split, k_test=k_test, rerank=rerank and self.teacher_model is not None,
                                     fusion=fusion)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "world": asdict(self.world.config), "student": asdict(self.student),
                "teacher": str(self.teacher_dir) if self.teacher_dir else None,
                "store": str(self.store_path) if self.store_path else None}


def open_workspace(world_cfg: WorldConfig | None = None, teacher_dir: str | Path | None = "auto",
                   store_path: str | Path | None = None, device: str = "auto",
                   dense_teacher: bool | None = None, student: str | StudentConfig | None = None
                   ) -> BuiltinWorkspace:
    """Build the world (default: ``WORLD_PRESETS["default"]``) and load the teacher (its stem is shared with
    students); ``teacher_dir="auto"``: the world's committed teacher (:func:`teacher_for_world`); ``None``: no
    teacher (a stem is pretrained instead).

    The teacher goes to ``device`` (CUDA when available for ``"auto"``); students move there when they train.
    ``dense_teacher``: score the whole training split once on the device and look scores up (default: on a GPU;
    see :meth:`BuiltinWorkspace.uses_dense_teacher`). ``student``: a :data:`STUDENT_PRESETS` name or a config for
    every new student (default: the world's, :func:`student_for_world`).
    """
    world_cfg = world_cfg or WORLD_PRESETS["default"]
    if teacher_dir == "auto":
        teacher_dir = teacher_for_world(world_cfg)
    world = build_world(world_cfg)
    teacher = None
    if teacher_dir is not None:
        if not (Path(teacher_dir) / "config.json").is_file():
            raise CheckpointError(
                f"no teacher checkpoint in {teacher_dir}: train one with `python -m workbench train-teacher --out DIR`"
            )
        teacher = load_teacher(teacher_dir).to(pick_device(device))
    stem = teacher.stem if teacher is not None else pretrain_stem(world.train)
    if isinstance(student, str):
        student = student_preset(student)
    return BuiltinWorkspace(world, teacher, stem, Path(store_path) if store_path else None,
                            Path(teacher_dir) if teacher_dir else None, dense_teacher, student)
