"""The Karpathy-data workspace: a Karpathy JSON + image folder, a BLIP ITM teacher and a CLIP / BLIP-ITC student from
`transformers` (loaded on first use), COCO protocol only, re-ranking through the persistent store. The interface is
:class:`~workbench.experiments.workspace.Workspace`'s.

    ws = open_karpathy_workspace("flickr30k", "data/dataset_flickr30k.json", "data/flickr30k-images",
                                 store="runs/teacher_scores.sqlite")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.checks import check_choice
from workbench.data.karpathy import DATASETS, KarpathySplit, load_karpathy
from workbench.distributed import current
from workbench.experiments.workspace import DEFAULT_STUDENT, DEFAULT_TEACHERS, STUDENT_MODEL_TYPES, Workspace
from workbench.scores.teacher_scores import TeacherScores


@dataclass
class KarpathyData:
    """A Karpathy dataset; its splits load on first use. ``fit`` reads ``.train`` as it reads a world's.

    Attributes:
        dataset: "flickr30k" or "coco".
        json_path: the Karpathy JSON (or the folder holding it); image_root: the image folder.
        max_images: keep the first N images of each split (quick runs); ``None`` keeps all.
        restval_as_train: COCO: train on train + restval (113,287 images, as BLIP and the paper).
    """

    dataset: str
    json_path: Path
    image_root: Path
    max_images: int | None = None
    restval_as_train: bool = False
    _splits: dict[str, KarpathySplit] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        self.json_path, self.image_root = Path(self.json_path), Path(self.image_root)

    def split(self, name: str) -> KarpathySplit:
        if name not in self._splits:
            self._splits[name] = load_karpathy(self.json_path, self.image_root, name, dataset=self.dataset,
                                               max_images=self.max_images,
                                               restval_as_train=self.restval_as_train and name == "train")
        return self._splits[name]

    @property
    def train(self) -> KarpathySplit:
        return self.split("train")

    @property
    def val(self) -> KarpathySplit:
        return self.split("val")

    @property
    def test(self) -> KarpathySplit:
        return self.split("test")

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "karpathy_json": str(self.json_path), "image_root": str(self.image_root),
                "max_images": self.max_images, "restval_as_train": self.restval_as_train}


@dataclass
class KarpathyWorkspace(Workspace):
    """A Karpathy dataset, its teacher (loaded when needed), the student's source and the teacher-score store."""

    data: KarpathyData
    teacher_source: str
    student_source: str
    student_kind: str = "clip"
    store_path: Path | None = None
    device: str = "auto"
    teacher_cache_images: int | None = 2048
    _teacher: Any = field(default=None, repr=False)
    _scores: dict[str, TeacherScores] = field(default_factory=dict, repr=False)

    kind = "karpathy"
    primary = "coco"
    rerank_uses_store = True

    @property
    def dataset(self) -> str:
        return self.data.dataset

    @property
    def teacher(self) -> Any:
        """The frozen BLIP ITM teacher (:class:`~workbench.models.hf.HFTeacher`), loaded on first use."""
        if self._teacher is None:
            from workbench.models.hf import HFTeacher

            self._teacher = HFTeacher(self.teacher_source, device=self.model_device)
        return self._teacher

    @property
    def namespace(self) -> str:
        """Teacher-store id space: image / caption ids are global within one dataset's Karpathy file."""
        return f"karpathy-{self.dataset}"

    def new_student(self) -> Any:
        from workbench.models.hf import HFStudent

        return HFStudent(self.student_source, self.student_kind, device=self.model_device)

    def _check_teacher(self) -> None:
        from workbench.models.hf.loading import check_model_source

        if self._teacher is None:
            check_model_source(self.teacher_source, "blip", "teacher model")

    def _check_data(self, splits: list[str], images: str) -> list[str]:
        from workbench.models.hf.loading import check_model_source

        check_model_source(self.student_source, STUDENT_MODEL_TYPES[self.student_kind], "student model")
        counts = {name: self.split(name).num_images for name in splits}  # loading checks that every file exists
        if images != "skip":
            for name in splits:
                self.split(name).check_images(decode=images == "full")
        what = {"skip": "exist (not opened: --check-images header or full opens them)",
                "header": "exist and open as images (headers; --check-images full decodes every one)",
                "full": "exist and decode"}[images]
        listed = ", ".join(f"{n:,} {name}" for name, n in counts.items())
        return [f"checks     student {self.student_source}: found; images ({listed}): all {what}"]

    def _scorer_options(self, split: str) -> dict[str, Any]:
        """Training keeps an LRU cache of ``teacher_cache_images`` image encodings; evaluation splits cache all."""
        return {"max_cached_images": self.teacher_cache_images if split == "train" else None}

    @property
    def model_device(self) -> str | torch.device:
        """Where the models go: this process's device under a launcher, else the configured one."""
        dist = current()
        return dist.device if dist.enabled and dist.device is not None else self.device

    def _rerank_scorer(self, card, img, txt, announce):
        if card.k_test is None:
            return None, None
        scores = self.teacher_scores(card.split)
        if announce is not None:
            from workbench.experiments.runs import rerank_cost

            announce(rerank_cost(scores, img, txt, card.k_test).text())
        before = scores.stats
        return (lambda i, c: scores(i, c)[0]), (lambda: scores.stats - before)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.data.describe(), "teacher": self.teacher_source,
                "student": self.student_source, "student_kind": self.student_kind,
                "store": str(self.store_path) if self.store_path else None}


def open_karpathy_workspace(dataset: str, karpathy_json: str | Path, image_root: str | Path, *,
                            teacher: str | None = None, student: str | None = None, student_kind: str = "clip",
                            store: str | Path | None = None, device: str = "auto", max_images: int | None = None,
                            restval_as_train: bool = False, teacher_cache_images: int | None = 2048
                            ) -> KarpathyWorkspace:
    """A :class:`KarpathyWorkspace`; ``teacher`` / ``student`` default to BLIP ITM fine-tuned on the dataset and CLIP
    ViT-B/16. Nothing heavy is loaded yet (splits and models load on first use)."""
    if karpathy_json is None or image_root is None:
        raise ValueError(f"dataset {dataset!r} needs --karpathy-json PATH and --image-root PATH")
    data = KarpathyData(dataset, Path(karpathy_json), Path(image_root), max_images, restval_as_train)
    return KarpathyWorkspace(data, teacher or DEFAULT_TEACHERS[dataset], student or DEFAULT_STUDENT, student_kind,
                             Path(store) if store else None, device, teacher_cache_images)
