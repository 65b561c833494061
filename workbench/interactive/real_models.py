"""Helpers of notebook 05 (real models): where the data and weights are, thumbnails, score groups."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.checks import check_int
from workbench.data.karpathy import DATASETS
from workbench.evaluation.embed import embed_split
from workbench.scores.mining import mine_hard_negatives, relation_exclude, sample_easy_negatives

ENV = {"karpathy_json": "WORKBENCH_KARPATHY_JSON", "image_root": "WORKBENCH_IMAGE_ROOT",
       "teacher": "WORKBENCH_TEACHER", "student": "WORKBENCH_STUDENT"}
"""Where notebook 05 reads the real setting from: field -> environment variable."""


@dataclass(frozen=True)
class RealSources:
    """The data and weights of a real run.

    Attributes:
        dataset: "flickr30k" or "coco".
        karpathy_json, image_root: the Karpathy JSON file and the image folder.
        teacher, student: hub names or local folders (BLIP ITM; CLIP).
        problems: why these cannot be used (unset variables, missing paths); empty when they can.
        tiny: True for the generated tiny stand-ins (random models, random images).
    """

    dataset: str
    karpathy_json: Path | None
    image_root: Path | None
    teacher: str | None
    student: str | None
    problems: tuple[str, ...] = ()
    tiny: bool = False

    @property
    def ready(self) -> bool:
        return not self.problems

    def explain(self) -> str:
        """A few lines: what will be used, or what is missing and where to get it."""
        if self.ready:
            what = "tiny random stand-ins (numbers only show that the code runs)" if self.tiny else "real data"
            return (f"{what}: {self.dataset} from {self.karpathy_json} (images {self.image_root}); teacher "
                    f"{self.teacher}; student {self.student}")
        lines = ["the real setting is not configured:", *(f"  - {p}" for p in self.problems),
                 "set WORKBENCH_KARPATHY_JSON (dataset_flickr30k.json or dataset_coco.json), WORKBENCH_IMAGE_ROOT "
                 "(the image folder), WORKBENCH_TEACHER (e.g. Salesforce/blip-itm-base-flickr or a local folder) and "
                 "WORKBENCH_STUDENT (e.g. openai/clip-vit-base-patch16); docs/real_data.md says what to download"]
        return "\n".join(lines)


def real_sources(environ: Mapping[str, str]) -> RealSources:
    """Read :data:`ENV` (and ``WORKBENCH_DATASET``, else inferred from the JSON's name) from ``environ``.

    Unset variables and paths that do not exist are listed in ``problems`` (never raised), so a notebook can say
    what is missing and fall back to tiny models. Hub names for the models are not checked here.
    """
    values = {key: (environ.get(var) or "").strip() or None for key, var in ENV.items()}
    problems = [f"{ENV[key]} is not set" for key, v in values.items() if v is None]
    for key in ("karpathy_json", "image_root"):
        if values[key] is not None and not Path(values[key]).exists():
            problems.append(f"{ENV[key]}={values[key]} does not exist")
    json_name = Path(values["karpathy_json"] or "").name.lower()
    dataset = (environ.get("WORKBENCH_DATASET") or "").strip() or ("coco" if "coco" in json_name else "flickr30k")
    if dataset not in DATASETS:
        problems.append(f"WORKBENCH_DATASET must be one of {list(DATASETS)}, got {dataset!r}")
    paths = {k: Path(values[k]) if values[k] else None for k in ("karpathy_json", "image_root")}
    return RealSources(dataset, paths["karpathy_json"], paths["image_root"], values["teacher"], values["student"],
                       tuple(problems))


def thumbnails(split: Any, idx: Sequence[int], size: int = 96) -> torch.Tensor:
    """float [n, 3, size, size] in [0, 1]: images of a Karpathy split, squashed to a square (for ``image_grid``)."""
    size = check_int("size", size, min_value=1)
    pics = [np.asarray(im.resize((size, size)), dtype=np.float32) / 255.0 for im in split.load_images(list(idx))]
    return torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2) if pics else torch.empty(0, 3, size, size)


@torch.no_grad()
def real_score_groups(student: Any, pair_scorer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], split: Any, *,
                      k_hard: int = 8, k_easy: int = 8, easy_rank: int = 100, queries: int | None = None,
                      seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Image -> text scores of a real split by group: each image's own captions, its ``k_hard`` hardest other
    captions under the student, and ``k_easy`` captions drawn beyond the student's rank ``easy_rank``.

    Args:
        student: a dual encoder (``HFStudent``); pair_scorer: ``(img long [P], cap long [P]) -> ITM logits [P]``.
        split: a Karpathy split (COCO protocol: a caption is a positive of its own image only).
        k_hard, k_easy, easy_rank: slate sizes (clamped to what the split holds).
        queries: use the first N images only (``None``: all).
        seed: the easy sample's seed.

    Returns:
        ``{"teacher logit" | "teacher probability" | "student logit": {"positive" | "hard" | "easy": float [n]}}``,
        ready for :func:`~workbench.findings.figures.score_histograms`.
    """
    img, txt = (e.float().cpu() for e in embed_split(student, split))
    n_img = len(img) if queries is None else min(check_int("queries", queries, min_value=1), len(img))
    img, scale = img[:n_img], student.logit_scale.detach().float().cpu()
    negatives = len(txt) - split.captions_per_image
    exclude = relation_exclude(split.relations()["coco"], "i2t")  # query rows 0..n_img-1 are split indices
    k_hard = min(check_int("k_hard", k_hard, min_value=1), negatives)
    easy_rank = min(check_int("easy_rank", easy_rank, min_value=0), max(negatives - k_easy, 0))
    hard = mine_hard_negatives(img, txt, k_hard, positives=exclude, scale=scale)
    easy = sample_easy_negatives(img, txt, check_int("k_easy", k_easy, min_value=1), beyond_rank=easy_rank,
                                 positives=exclude, generator=torch.Generator().manual_seed(seed), scale=scale)
    own = torch.nonzero(split.caption_image < n_img).flatten()
    pairs = {"positive": (split.caption_image[own], own)}
    for group, mined in (("hard", hard), ("easy", easy)):
        rows = torch.arange(n_img)[:, None].expand_as(mined.indices)
        pairs[group] = (rows[mined.valid], mined.indices[mined.valid])
    out: dict[str, dict[str, np.ndarray]] = {"teacher logit": {}, "teacher probability": {}, "student logit": {}}
    for group, (i, c) in pairs.items():
        u = pair_scorer(i, c).float().cpu()
        out["teacher logit"][group] = u.numpy().astype(np.float64)
        out["teacher probability"][group] = u.sigmoid().numpy().astype(np.float64)
        out["student logit"][group] = (scale * (img[i] * txt[c]).sum(-1)).numpy().astype(np.float64)
    return out
