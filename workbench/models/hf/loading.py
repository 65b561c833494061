"""Loading `transformers` models and processors by hub name or local folder, dtypes, text checks and the
caption-token cache shared by the BLIP teacher and the CLIP / BLIP-ITC students (see :mod:`workbench.models.hf`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.checks import check_choice, check_int, check_tensor

BLIP_MAX_TEXT_LENGTH = 35
"""Caption length (tokens) of BLIP's retrieval fine-tuning and evaluation in LAVIS; CLIP uses its 77 positions."""


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set to a true value (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _source(name_or_path: str | os.PathLike, what: str) -> tuple[str, dict[str, Any]]:
    """``(name or path, from_pretrained kwargs)``: local folders load with ``local_files_only``; a hub name
    loads from the cache only when ``HF_HUB_OFFLINE`` is set. A path-like name that does not exist is an error."""
    text = os.fspath(name_or_path)
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} must be a hub name or a local folder, got {name_or_path!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path), {"local_files_only": True}
    if isinstance(name_or_path, Path) or text.startswith(("/", ".", "~")) or text.count("/") > 1 or path.exists():
        raise FileNotFoundError(f"{what} {text!r} looks like a local path but is not an existing folder")
    return text, {"local_files_only": hub_offline()}


def _load(loader: Any, name_or_path: str | os.PathLike, what: str) -> Any:
    """``loader.from_pretrained`` with a clear error naming the source and the offline mode."""
    source, kwargs = _source(name_or_path, what)
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        where = "local folder" if Path(source).is_dir() else "hub name"
        offline = " (HF_HUB_OFFLINE is set: only the local cache is used)" if hub_offline() else ""
        raise OSError(f"cannot load the {what} from {where} {source!r}{offline}: {err}") from err


def check_model_source(name_or_path: str | os.PathLike, model_type: str, what: str) -> None:
    """Check, without loading weights, that ``name_or_path`` resolves (local folder, cache or hub) to a
    ``model_type`` checkpoint: reads its config only. Raises ``OSError`` / ``FileNotFoundError`` / ``ValueError``
    naming the source."""
    from transformers import AutoConfig

    config = _load(AutoConfig, name_or_path, what)
    if config.model_type != model_type:
        raise ValueError(f"{what} {os.fspath(name_or_path)!r} is a {config.model_type!r} checkpoint; expected a "
                         f"{model_type!r} one")


def _load_model(cls: type, name_or_path: str | os.PathLike, model_type: str, what: str) -> Any:
    """Load ``cls`` after checking that the checkpoint's ``model_type`` is ``model_type`` (transformers would
    otherwise warn and randomly initialise whatever does not match)."""
    from transformers import AutoConfig

    config = _load(AutoConfig, name_or_path, what)
    if config.model_type != model_type:
        raise ValueError(
            f"{what} {os.fspath(name_or_path)!r} is a {config.model_type!r} checkpoint; "
            f"{cls.__name__} needs a {model_type!r} one"
        )
    return _load(cls, name_or_path, what)


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device, *, low_precision_on_gpu: bool) -> torch.dtype:
    """``dtype`` as a torch dtype; ``None`` picks bf16 (fp16 without bf16 support) on CUDA when
    ``low_precision_on_gpu``, fp32 otherwise."""
    if dtype is None:
        if device.type == "cuda" and low_precision_on_gpu:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        check_choice("dtype", dtype, list(_DTYPES))
        return _DTYPES[dtype]
    check_choice("dtype", dtype, sorted(set(_DTYPES.values()), key=str))
    return dtype


def _model_name(name_or_path: str | os.PathLike) -> str:
    """A hub name as given; a local folder by its folder name (so moving a folder keeps fingerprints)."""
    path = Path(os.fspath(name_or_path)).expanduser()
    return path.resolve().name if path.is_dir() else os.fspath(name_or_path)


def _pooled(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4.x) or an output whose ``pooler_output`` it is (5.x)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _Preprocessing:
    """``prepare_images`` / ``prepare_texts`` through the model's own processor, onto the adapter's device."""

    processor: Any
    device: torch.device
    max_text_length: int

    def prepare_images(self, images: Sequence[Any]) -> torch.Tensor:
        """PIL images (any size, RGB) -> pixel_values float [B, 3, H, W] on the adapter's device."""
        if isinstance(images, str | bytes) or not isinstance(images, Sequence) or not images:
            raise ValueError(f"images must be a non-empty list of PIL images, got {type(images).__name__}")
        return self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)

    def prepare_texts(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions -> ``{"input_ids": long [B, T], "attention_mask": long [B, T]}`` (padded to the longest,
        truncated to ``max_text_length``) on the adapter's device."""
        _check_texts(texts)
        tokens = self.processor.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_text_length, return_tensors="pt"
        )
        return {key: tokens[key].to(self.device) for key in ("input_ids", "attention_mask")}


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"texts must be a non-empty list of strings, got {type(texts).__name__} {texts!r:.60}")
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must hold only strings, got {type(bad[0]).__name__} {bad[0]!r:.60}")


def _max_text_length(model: Any, kind: str, requested: int | None) -> int:
    positions = model.config.text_config.max_position_embeddings
    if requested is None:
        return min(BLIP_MAX_TEXT_LENGTH, positions) if kind != "clip" else positions
    return check_int("max_text_length", requested, min_value=2, max_value=positions)


def _check_text_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    check_tensor("input_ids", input_ids, ndim=2, dtype="int")
    check_tensor("attention_mask", attention_mask, shape=tuple(input_ids.shape), dtype="int")


def _index_list(idx: Any) -> list[int]:
    return idx.tolist() if isinstance(idx, torch.Tensor) else [int(i) for i in idx]


class CaptionTokens:
    """A split's captions tokenised on first use (each once) and padded per batch.

    ``tokens.batch(idx)`` -> ``(input_ids long [P, T], attention_mask long [P, T])`` on CPU, right-padded with the
    tokenizer's pad token to the batch's longest caption, truncated to ``max_length`` tokens: the same tensors as
    ``tokenizer(texts, padding="longest", truncation=True, max_length=max_length)``.
    """

    def __init__(self, tokenizer: Any, texts: Sequence[str], max_length: int):
        self.tokenizer, self.texts, self.max_length = tokenizer, texts, max_length
        self._ids: dict[int, torch.Tensor] = {}  # caption index -> long [T_c], unpadded

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [c for c in dict.fromkeys(idx) if c not in self._ids]
        if missing:
            encoded = self.tokenizer([self.texts[c] for c in missing], truncation=True,
                                     max_length=self.max_length)["input_ids"]
            for c, ids in zip(missing, encoded, strict=True):
                self._ids[c] = torch.tensor(ids, dtype=torch.long)
        rows = [self._ids[c] for c in idx]
        ids = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        lengths = torch.tensor([len(r) for r in rows])
        mask = (torch.arange(ids.shape[1]) < lengths.unsqueeze(1)).long()
        return ids, mask


def _auto_processor() -> Any:
    from transformers import AutoProcessor

    return AutoProcessor


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
