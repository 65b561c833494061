"""Readers for the Karpathy splits of Flickr30K and MSCOCO: a JSON file plus an image folder.

The Karpathy files (``dataset_flickr30k.json``, ``dataset_coco.json``) hold one record per image::

    {"dataset": "coco",
     "images": [{"filepath": "val2014",            # COCO only: sub-folder of the image root
                 "filename": "COCO_val2014_000000391895.jpg",
                 "imgid": 0, "split": "test",      # "train" | "val" | "test" | "restval" (COCO only)
                 "sentids": [770337, ...],
                 "sentences": [{"raw": "A man riding ...", "tokens": [...], "sentid": 770337, "imgid": 0}, ...]},
                ...]}

An image's file is ``image_root / filepath / filename`` (``image_root / filename`` when there is no
``filepath``, as in Flickr30K).

Conventions (those of LAVIS / BLIP's retrieval evaluation):

- Exactly ``captions_per_image`` captions per image (5): the first ones in file order. A few COCO images have
  6 or 7; the extra ones are dropped. An image with fewer is an error by default (``skip_short=True`` skips it
  with a warning instead), so every split keeps the fixed 5-captions-per-image protocol that published numbers
  assume.
- ``restval`` (COCO only, 30,504 images) is a split of its own; ``restval_as_train=True`` adds it to ``"train"``,
  which gives the 113,287-image training set of BLIP/LAVIS and of the paper. The default keeps Karpathy's
  82,783-image ``train``, so a run says explicitly which one it used.
- Captions are the ``raw`` sentences, cleaned (``clean=True``): lower case, the characters ``.!"()*#:;~``
  replaced by spaces, runs of spaces collapsed. Tokenisation is left to each model's own processor.
- ``image_ids`` / ``caption_ids`` are the file's ``imgid`` / ``sentid``: global and stable across splits and
  runs, so they can key the teacher-score store.

The reader knows nothing about models: images are returned as PIL images by :meth:`KarpathySplit.load_images`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.checks import check_choice, check_int
from workbench.data.relations import ImageIdRelation, ids_to_index
from workbench.io import read_json

DATASETS = ("flickr30k", "coco")
SPLITS = ("train", "val", "test", "restval")
JSON_NAMES = {"flickr30k": "dataset_flickr30k.json", "coco": "dataset_coco.json"}
"""The Karpathy file of each dataset; ``load_karpathy`` looks for it when given a folder."""

_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_SPACES = re.compile(r"\s+")


@dataclass
class KarpathySplit:
    """One split of a Karpathy-format dataset. Image ``i``'s captions are those ``c`` with ``caption_image[c] == i``.

    Attributes:
        name: the split asked for ("train", "val", "test" or "restval").
        dataset: "flickr30k" or "coco".
        texts: M caption strings (cleaned), ``captions_per_image`` consecutive ones per image.
        caption_image: long [M], the index (0..N-1) of each caption's image.
        image_paths: N image files.
        image_ids: long [N], the file's ``imgid`` of each image (global).
        caption_ids: long [M], the file's ``sentid`` of each caption (global).
        captions_per_image: captions kept per image (5 in the standard protocol).
    """

    name: str
    dataset: str
    texts: list[str]
    caption_image: torch.Tensor
    image_paths: list[Path]
    image_ids: torch.Tensor
    caption_ids: torch.Tensor
    captions_per_image: int

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    @property
    def num_captions(self) -> int:
        return len(self.texts)

    def relations(self) -> dict[str, ImageIdRelation]:
        """The retrieval protocol of real data: ``{"coco": ImageIdRelation}`` (a caption matches its own image)."""
        return {"coco": ImageIdRelation(self.caption_image, self.num_images)}

    def load_images(self, idx: Iterable[int] | torch.Tensor) -> list[Any]:
        """Open images by split index (0..N-1) as RGB ``PIL.Image.Image`` objects, in the order given.

        Raises ``IndexError`` for an index out of range and ``FileNotFoundError`` / ``ValueError`` naming the file
        and the image id for a missing or unreadable image.
        """
        from PIL import Image, UnidentifiedImageError

        idx = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        images = []
        for i in idx:
            if not isinstance(i, int) or not 0 <= i < self.num_images:
                raise IndexError(f"image index must be an int in [0, {self.num_images}), got {i!r}")
            path = self.image_paths[i]
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except FileNotFoundError as err:
                raise FileNotFoundError(f"image file not found: {path} (imgid {self._imgid(i)})") from err
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"cannot read image {path} (imgid {self._imgid(i)}): {err}") from err
        return images

    def check_images(self, decode: bool = False) -> int:
        """Open every image of the split before a run reads it: its header (``decode=False``: fast, finds files
        that are not images) or its whole content (``decode=True``: also finds truncated or damaged data).
        Returns the number checked.

        Raises:
            ValueError: naming how many images failed, the first one's file and imgid, and why.
        """
        from PIL import Image

        bad = []
        for i, path in enumerate(self.image_paths):
            try:
                with Image.open(path) as image:  # parses the header
                    if decode:
                        image.load()
            except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for unreadable or damaged files
                bad.append((i, err))
        if bad:
            i, err = bad[0]
            raise ValueError(f"{len(bad)} of {self.num_images} image(s) of split {self.name!r} cannot be read, e.g. "
                             f"{self.image_paths[i]} (imgid {self._imgid(i)}): {err}; fix or remove them")
        return self.num_images

    def image_index(self, image_ids: torch.Tensor) -> torch.Tensor:
        """Global image ids (``imgid``) long [P] -> split indices long [P] (ids are not contiguous in general)."""
        return self._index("image_ids", self.image_ids, image_ids)

    def caption_index(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """Global caption ids (``sentid``) long [P] -> split indices long [P]. Caption ids skip the captions beyond
        ``captions_per_image``, so ``id - first_id`` is not an index."""
        return self._index("caption_ids", self.caption_ids, caption_ids)

    def _index(self, name: str, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return ids_to_index(table, ids, name, self.name)

    def _imgid(self, i: int) -> int:
        return int(self.image_ids[i])


def clean_caption(raw: str) -> str:
    """Lower-case ``raw``, replace the characters ``.!"()*#:;~`` by spaces and collapse runs of white space."""
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", raw.lower())).strip()


def load_karpathy(
    json_path: str | Path,
    image_root: str | Path,
    split: str = "test",
    *,
    dataset: str = "flickr30k",
    captions_per_image: int = 5,
    max_images: int | None = None,
    restval_as_train: bool = False,
    skip_short: bool = False,
    clean: bool = True,
    check_images: bool = True,
) -> KarpathySplit:
    """Read one split of a Karpathy-format dataset.

    Args:
        json_path: the Karpathy JSON, or a folder holding ``dataset_flickr30k.json`` / ``dataset_coco.json``.
        image_root: folder of the images (COCO: the folder holding ``train2014/`` and ``val2014/``).
        split: "train", "val", "test" or "restval" (COCO only).
        dataset: "flickr30k" or "coco"; must agree with the file's ``"dataset"`` field when it has one.
        captions_per_image: captions kept per image (the first ones in file order).
        max_images: keep only the first ``max_images`` images of the split (file order); ``None`` keeps all.
        restval_as_train: with ``split="train"``, also include the ``restval`` images (COCO's 113K training set).
        skip_short: skip images with fewer than ``captions_per_image`` captions (with a warning) instead of raising.
        clean: clean captions with :func:`clean_caption`; ``False`` keeps the ``raw`` strings.
        check_images: check that every image file exists (one ``stat`` per image) and fail early if not.

    Returns:
        The :class:`KarpathySplit`.

    Raises:
        FileNotFoundError: the JSON, the image root or (with ``check_images``) an image file is missing.
        ValueError: malformed JSON, unknown split or dataset, a dataset mismatch, or too few captions.
    """
    check_choice("dataset", dataset, DATASETS)
    check_choice("split", split, SPLITS)
    check_int("captions_per_image", captions_per_image, min_value=1)
    if max_images is not None:
        check_int("max_images", max_images, min_value=1)
    json_path = _resolve_json(json_path, dataset)
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise FileNotFoundError(f"image_root must be an existing folder of images, got {image_root} (not found)")
    records = _read_records(json_path, dataset)
    wanted = {"train", "restval"} if split == "train" and restval_as_train else {split}
    chosen = [r for r in records if r["split"] in wanted]
    if not chosen:
        present = sorted({r["split"] for r in records})
        raise ValueError(
            f"split {split!r} has no images in {json_path}; splits present in the file: {present} "
            f"(valid split names: {list(SPLITS)})"
        )
    chosen = _with_enough_captions(chosen, captions_per_image, skip_short, json_path)[:max_images]
    out = _build_split(chosen, image_root, split, dataset, captions_per_image, clean)
    if check_images:
        _check_image_files(out)
    return out


# ---------------------------------------------------------------------------------------------- parsing


def _resolve_json(json_path: str | Path, dataset: str) -> Path:
    path = Path(json_path)
    if path.is_dir():
        path = path / JSON_NAMES[dataset]
    if not path.is_file():
        raise FileNotFoundError(
            f"Karpathy JSON not found: {path} (json_path must be {JSON_NAMES[dataset]} or the folder holding it)"
        )
    return path


def _read_records(json_path: Path, dataset: str) -> list[dict[str, Any]]:
    """The validated image records of the file, in file order."""
    data = read_json(json_path, what="Karpathy JSON")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"Karpathy JSON {json_path} must be an object with an 'images' list, got {_kind(data)}")
    declared = data.get("dataset")
    if declared is not None and declared != dataset and not (dataset == "coco" and declared == "mscoco"):
        raise ValueError(f"dataset={dataset!r} was given but {json_path} declares dataset {declared!r}")
    records = [_check_record(r, n, json_path) for n, r in enumerate(data["images"])]
    ids = [r["imgid"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Karpathy JSON {json_path} repeats imgid values; every image needs its own imgid")
    return records


def _check_record(record: Any, n: int, json_path: Path) -> dict[str, Any]:
    where = f"Karpathy JSON {json_path}: images[{n}]"
    if not isinstance(record, dict):
        raise ValueError(f"{where} must be an object, got {_kind(record)}")
    for key, types in (("filename", str), ("imgid", int), ("split", str), ("sentences", list)):
        if not isinstance(record.get(key), types) or isinstance(record.get(key), bool):
            raise ValueError(f"{where} needs {key!r} of type {types.__name__}, got {_kind(record.get(key))}")
    if "filepath" in record and not isinstance(record["filepath"], str):
        raise ValueError(f"{where} has a non-string 'filepath': {_kind(record['filepath'])}")
    relative = Path(record.get("filepath", "")) / record["filename"]
    if relative.is_absolute() or ".." in relative.parts or not record["filename"]:
        raise ValueError(f"{where} (imgid {record['imgid']}) names the image file {str(relative)!r}, which is not "
                         "a relative path inside image_root; filepath and filename must not be absolute or use '..'")
    for s, sentence in enumerate(record["sentences"]):
        if not (isinstance(sentence, dict) and isinstance(sentence.get("raw"), str)
                and isinstance(sentence.get("sentid"), int)):
            raise ValueError(f"{where}.sentences[{s}] needs a string 'raw' and an int 'sentid', got {_kind(sentence)}")
    return record


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _with_enough_captions(
    records: list[dict[str, Any]], captions_per_image: int, skip_short: bool, json_path: Path
) -> list[dict[str, Any]]:
    short = [r for r in records if len(r["sentences"]) < captions_per_image]
    if not short:
        return records
    first = short[0]
    message = (
        f"{len(short)} image(s) in {json_path} have fewer than captions_per_image={captions_per_image} captions, "
        f"e.g. imgid {first['imgid']} ({first['filename']}) has {len(first['sentences'])}"
    )
    if not skip_short:
        raise ValueError(message + "; pass skip_short=True to skip them or lower captions_per_image")
    warnings.warn(message + "; skipping them", stacklevel=3)
    return [r for r in records if len(r["sentences"]) >= captions_per_image]


def _build_split(
    records: Sequence[dict[str, Any]], image_root: Path, split: str, dataset: str, per_image: int, clean: bool
) -> KarpathySplit:
    texts, caption_ids = [], []
    for record in records:
        for sentence in record["sentences"][:per_image]:
            texts.append(clean_caption(sentence["raw"]) if clean else sentence["raw"])
            caption_ids.append(sentence["sentid"])
    return KarpathySplit(
        name=split,
        dataset=dataset,
        texts=texts,
        caption_image=torch.arange(len(records)).repeat_interleave(per_image),
        image_paths=[image_root / r.get("filepath", "") / r["filename"] for r in records],
        image_ids=torch.tensor([r["imgid"] for r in records], dtype=torch.long),
        caption_ids=torch.tensor(caption_ids, dtype=torch.long),
        captions_per_image=per_image,
    )


def _check_image_files(split: KarpathySplit) -> None:
    missing = [i for i, path in enumerate(split.image_paths) if not path.is_file()]
    if missing:
        i = missing[0]
        raise FileNotFoundError(
            f"{len(missing)} of {split.num_images} image file(s) of split {split.name!r} are missing, e.g. "
            f"{split.image_paths[i]} (imgid {split._imgid(i)}); check image_root (pass check_images=False to defer "
            "this check to loading time)"
        )
