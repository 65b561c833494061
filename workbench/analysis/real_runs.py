"""Runs on real data: a BLIP ITM teacher and a CLIP / BLIP-ITC student on the Karpathy splits of Flickr30K or MSCOCO,
through the same trainer, store and evaluators as the built-in world.

    ws = open_real_workspace("flickr30k", "data/dataset_flickr30k.json", "data/flickr30k-images",
                             teacher="Salesforce/blip-itm-base-flickr", student="openai/clip-vit-base-patch16",
                             store="runs/teacher_scores.sqlite")
    metrics = train_real_run(ws, cfg, "runs/flickr-cprd")          # cfg: FitConfig with positives="coco"

A run folder holds ``config.json`` (fit config, dataset, teacher, student, store), ``history.json``,
``metrics.json`` (test metrics with the protocol card) and ``checkpoint/`` (the student's weights + trainer state).
Teacher scores go through the persistent store under the namespace ``karpathy-<dataset>`` (Karpathy ``imgid`` /
``sentid`` are global within a dataset file), so re-ranking and training share them, across runs and processes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.analysis.evaluate import embed_split, evaluate_student
from workbench.analysis.protocol import ProtocolCard, TeacherCost, protocol_card, training_cost
from workbench.analysis.retrieval import retrieval_metrics
from workbench.checks import check_choice
from workbench.data.karpathy import DATASETS, KarpathySplit, load_karpathy
from workbench.io import write_json
from workbench.scores.mining import mine_hard_negatives, relation_exclude
from workbench.scores.similarity import topk_similarity
from workbench.scores.teacher_scores import TeacherScores
from workbench.training.config import FitConfig
from workbench.training.distributed import Dist, current
from workbench.training.loop import fit

DEFAULT_TEACHERS = {"flickr30k": "Salesforce/blip-itm-base-flickr", "coco": "Salesforce/blip-itm-base-coco"}
DEFAULT_STUDENT = "openai/clip-vit-base-patch16"
REAL_FIT_DEFAULTS: dict[str, Any] = {"positives": "coco", "lr": 1e-5, "warmup": 100, "weight_decay": 0.1}
"""FitConfig fields whose built-in defaults do not suit fine-tuning a pretrained model on real data (the CLI uses
these unless given): COCO positives (a caption matches its own image), CLIP-style fine-tuning learning rate."""


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

    @property
    def namespace(self) -> str:
        """Teacher-store id space: image / caption ids are global within one dataset's Karpathy file."""
        return f"karpathy-{self.dataset}"

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "karpathy_json": str(self.json_path), "image_root": str(self.image_root),
                "max_images": self.max_images, "restval_as_train": self.restval_as_train}


@dataclass
class RealWorkspace:
    """A Karpathy dataset, its teacher (loaded when needed), the student's source and the teacher-score store."""

    data: KarpathyData
    teacher_source: str
    student_source: str
    student_kind: str = "clip"
    store_path: Path | None = None
    device: str = "auto"
    teacher_cache_images: int | None = 2048
    _teacher: Any = field(default=None, repr=False)

    @property
    def teacher(self) -> Any:
        """The frozen BLIP ITM teacher (:class:`~workbench.models.hf.HFTeacher`), loaded on first use."""
        if self._teacher is None:
            from workbench.models.hf import HFTeacher

            self._teacher = HFTeacher(self.teacher_source, device=self.model_device)
        return self._teacher

    def new_student(self) -> Any:
        from workbench.models.hf import HFStudent

        return HFStudent(self.student_source, self.student_kind, device=self.model_device)

    def teacher_scores(self, split: str = "train") -> TeacherScores:
        """Store-backed teacher scores of a split (training: an LRU cache of ``teacher_cache_images`` image
        encodings; evaluation splits: every image cached)."""
        limit = self.teacher_cache_images if split == "train" else None
        return TeacherScores(self.teacher, self.data.split(split), self.store_path, self.data.namespace,
                             max_cached_images=limit)

    @property
    def model_device(self) -> str | torch.device:
        """Where the models go: this process's device under a launcher, else the configured one."""
        dist = current()
        return dist.device if dist.enabled and dist.device is not None else self.device

    def describe(self) -> dict[str, Any]:
        return self.data.describe() | {"teacher": self.teacher_source, "student": self.student_source,
                                       "student_kind": self.student_kind,
                                       "store": str(self.store_path) if self.store_path else None}


def open_real_workspace(dataset: str, karpathy_json: str | Path, image_root: str | Path, *,
                        teacher: str | None = None, student: str | None = None, student_kind: str = "clip",
                        store: str | Path | None = None, device: str = "auto", max_images: int | None = None,
                        restval_as_train: bool = False, teacher_cache_images: int | None = 2048) -> RealWorkspace:
    """A :class:`RealWorkspace`; ``teacher`` / ``student`` default to BLIP ITM fine-tuned on the dataset and CLIP
    ViT-B/16. Nothing heavy is loaded yet (splits and models load on first use)."""
    if karpathy_json is None or image_root is None:
        raise ValueError(f"dataset {dataset!r} needs --karpathy-json PATH and --image-root PATH")
    data = KarpathyData(dataset, Path(karpathy_json), Path(image_root), max_images, restval_as_train)
    return RealWorkspace(data, teacher or DEFAULT_TEACHERS[dataset], student or DEFAULT_STUDENT, student_kind,
                         Path(store) if store else None, device, teacher_cache_images)


def real_val_retrieval(ws: RealWorkspace):
    """An ``evaluate`` callback for ``fit``: COCO-protocol R@1 / RSUM on the validation split (sharded)."""

    def evaluate(student) -> dict[str, float]:
        split = ws.data.val
        img, txt = embed_split(student, split)
        m = retrieval_metrics(img, txt, split.relations(), ks=_ks(split))
        return {f"val_{p}_{k}": v for p in m for k, v in m[p].items() if k.startswith("r1_") or k == "rsum"}

    return evaluate


def _ks(split: KarpathySplit) -> tuple[int, ...]:
    from workbench.analysis.protocol import usable_ks

    return usable_ks((1, 5, 10), min(split.num_images, split.num_captions))


def eval_card(ws: RealWorkspace, split: str = "test", *, k_test: int | None = None, rerank: bool = True,
              fusion: str = "itm") -> ProtocolCard:
    return protocol_card(ws.data.dataset, ws.data.split(split), k_test=k_test, rerank=rerank, fusion=fusion)


def real_student_metrics(ws: RealWorkspace, student: Any, card: ProtocolCard, *, announce=None,
                         progress: bool = False) -> dict[str, Any]:
    """Test metrics of a student under ``card`` (its split, cut-offs, ``k_test`` and fusion), re-ranked through
    the store when the card has a ``k_test``. ``announce(text)`` receives the exact teacher cost before the
    teacher runs."""
    split = ws.data.split(card.split)
    scores = ws.teacher_scores(card.split) if card.k_test is not None else None
    img, txt = embed_split(student, split, progress=progress)
    if scores is not None and announce is not None:
        announce(rerank_cost(scores, img, txt, card.k_test).text())
    before = scores.stats if scores is not None else None
    scorer = None if scores is None else (lambda i, c: scores(i, c)[0])
    out = evaluate_student(student, split, k_test=card.k_test or 1, fusion=card.fusion, pair_scorer=scorer,
                           ks=card.ks, progress=progress, embeddings=(img, txt))
    out["protocol"] = card.to_dict()
    if scores is not None:
        out["teacher_store"] = asdict(scores.stats - before)
        scores.close()
    return out


def rerank_cost(scores: TeacherScores, img: torch.Tensor, txt: torch.Tensor, k_test: int) -> TeacherCost:
    """The exact teacher bill of re-ranking: both directions' top-``k_test`` pairs less those already stored."""
    pairs = []
    for direction, query, gallery in (("i2t", img, txt), ("t2i", txt, img)):
        idx = topk_similarity(query, gallery, k_test)[1].cpu()
        q = torch.arange(len(query))[:, None].expand_as(idx).reshape(-1)
        pairs.append((q, idx.reshape(-1)) if direction == "i2t" else (idx.reshape(-1), q))
    terms = (("i2t", len(img), k_test), ("t2i", len(txt), k_test))
    return _exact_cost("re-ranking", terms, scores, torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))


def _exact_cost(task: str, terms, scores: TeacherScores, img: torch.Tensor, cap: torch.Tensor) -> TeacherCost:
    """The cost of scoring the pairs ``(img [P], cap [P])`` (split indices), duplicates and store hits known."""
    keys = torch.unique(img.cpu() * scores.split.num_captions + cap.cpu())
    i, c = keys // scores.split.num_captions, keys % scores.split.num_captions
    stored = int(scores.stored(i, c).sum())
    return TeacherCost(task, terms, distinct=len(keys), stored=stored, exact=True, store_rows=len(scores.store))


def train_real_run(ws: RealWorkspace, cfg: FitConfig, out_dir: str | Path | None, card: ProtocolCard, *,
                   resume: bool = False, progress=None, step_callbacks=(), callbacks=(), announce=None,
                   dist: Dist | None = None) -> dict[str, Any]:
    """Train a student on the training split, evaluate it under ``card``; write the run folder (main process)."""
    dist = current() if dist is None else dist
    teacher_scores = ws.teacher_scores("train") if cfg.distill_terms else None
    if announce is not None:
        rows = len(teacher_scores.store) if teacher_scores is not None and ws.store_path else None
        cost = training_cost(cfg.steps, cfg.batch, dist.world_size, cfg.k, cfg.negatives, rows)
        announce(cost.text() if cfg.distill_terms else TeacherCost("training", ()).text())
    student = ws.new_student()
    start = time.time()
    state = fit(cfg, ws.data, student, teacher_scores=teacher_scores, evaluate=real_val_retrieval(ws),
                out_dir=out_dir, resume=resume, progress=progress, step_callbacks=step_callbacks,
                callbacks=callbacks, dist=dist)
    seconds = time.time() - start
    metrics = real_student_metrics(ws, student, card, announce=announce) | {"train_seconds": seconds}
    if teacher_scores is not None:
        metrics["teacher_store_train"] = asdict(teacher_scores.stats)
        teacher_scores.close()
    if out_dir is not None and dist.is_main:
        out = Path(out_dir)
        write_json(out / "config.json", {"fit": cfg.to_dict(), "real": ws.describe(), "processes": dist.world_size})
        write_json(out / "history.json", state.history)
        write_json(out / "metrics.json", metrics)
    return metrics


def fill_store(ws: RealWorkspace, student: Any, split: str, top: int, *, announce=None,
               dist: Dist | None = None) -> dict[str, Any]:
    """Score each query's top-``top`` candidates (both directions, positives excluded) into the store; ranks
    share the work (each scores a slice of the pairs into the shared store file)."""
    dist = current() if dist is None else dist
    data = ws.data.split(split)
    img, txt = embed_split(student, data)
    relation = data.relations()["coco"]
    pairs = []
    for direction, (q, c) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        mined = mine_hard_negatives(q, c, min(top, len(c) - 1), positives=relation_exclude(relation, direction))
        rows = torch.arange(len(q), device=mined.indices.device)[:, None].expand_as(mined.indices)
        keep = mined.valid.flatten()
        ij = (rows.flatten()[keep], mined.indices.flatten()[keep])
        pairs.append(ij if direction == "i2t" else ij[::-1])
    i, c = (torch.cat([p[0] for p in pairs]).cpu(), torch.cat([p[1] for p in pairs]).cpu())
    scores = ws.teacher_scores(split)
    if announce is not None:
        terms = (("i2t", len(img), min(top, len(txt) - 1)), ("t2i", len(txt), min(top, len(img) - 1)))
        announce(_exact_cost("store fill", terms, scores, i, c).text())
    before = scores.stats
    rows = dist.shard(len(i))
    scores(i[rows.start : rows.stop], c[rows.start : rows.stop])
    stats = scores.stats - before
    scores.close()
    dist.barrier()
    return {"pairs": len(i), "computed_pairs": stats.computed_pairs, "hit_rate": stats.hit_rate}
