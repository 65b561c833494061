"""The dual-encoder student on `transformers`: CLIP or BLIP's ITC towers (see :mod:`workbench.models.hf`)."""

from __future__ import annotations

import math
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workbench.checks import check_choice, check_int, check_tensor
from workbench.data.karpathy import KarpathySplit
from workbench.device import pick_device
from workbench.models.hf.loading import (
    CaptionTokens,
    _auto_processor,
    _check_text_inputs,
    _index_list,
    _load,
    _load_model,
    _max_text_length,
    _pooled,
    _Preprocessing,
    resolve_dtype,
)

STUDENT_KINDS = ("clip", "blip_itc")


class HFStudent(_Preprocessing, nn.Module):
    """A trainable dual encoder from `transformers`: ``CLIPModel`` (``kind="clip"``) or BLIP's ITC towers
    (``kind="blip_itc"``).

    Args:
        name_or_path: hub name or local folder (model + processor).
        kind: "clip" or "blip_itc".
        device: "auto" (CUDA when available), "cpu", "cuda", ...
        dtype: weights' dtype; default fp32 (train with autocast for mixed precision).
        max_text_length: caption tokens kept; default 77 for CLIP (its positions), 35 for BLIP (LAVIS).
        image_workers: threads opening and decoding a batch's image files in :meth:`encode_images` (JPEG decoding
            releases the GIL); 1 opens them one by one.

    The trainer and the evaluators read a :class:`KarpathySplit` through :meth:`encode_images` /
    :meth:`encode_texts` (images loaded from disk and preprocessed; captions tokenised once per split).
    """

    embed_batch = 128  # images / captions per call when a whole split is embedded

    def __init__(
        self,
        name_or_path: str | os.PathLike,
        kind: str = "clip",
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str | None = None,
        max_text_length: int | None = None,
        image_workers: int = 4,
    ):
        super().__init__()
        self.kind = check_choice("kind", kind, STUDENT_KINDS)
        self.image_workers = check_int("image_workers", image_workers, min_value=1)
        self.name_or_path = os.fspath(name_or_path)
        device = pick_device(device) if isinstance(device, str) else torch.device(device)
        self.dtype = resolve_dtype(dtype, device, low_precision_on_gpu=False)
        self.model = self._load_model(name_or_path)
        self.processor = _load(_auto_processor(), name_or_path, "student processor")
        self.max_text_length = _max_text_length(self.model, kind, max_text_length)
        if kind == "blip_itc":
            init = math.exp(-self.model.config.logit_scale_init_value)
            self.temp = nn.Parameter(torch.tensor(init, dtype=self.dtype))
            self._freeze_unused_blip_parts()
        self._captions: dict[int, tuple[weakref.ref, CaptionTokens]] = {}
        self.to(device=device, dtype=self.dtype)

    @property
    def device(self) -> torch.device:
        """Where the weights are (follows ``.to(...)``); inputs are prepared there."""
        return next(self.parameters()).device

    @property
    def embed_dim(self) -> int:
        """Size of the joint embedding space (CLIP's ``projection_dim``, BLIP's ``image_text_hidden_size``)."""
        config = self.model.config
        return config.projection_dim if self.kind == "clip" else config.image_text_hidden_size

    def _load_model(self, name_or_path: str | os.PathLike) -> nn.Module:
        from transformers import BlipForImageTextRetrieval, CLIPModel

        if self.kind == "clip":
            return _load_model(CLIPModel, name_or_path, "clip", "student model")
        return _load_model(BlipForImageTextRetrieval, name_or_path, "blip", "student model")

    def _freeze_unused_blip_parts(self) -> None:
        """The ITC path never runs the ITM head or the text encoder's cross-attention: freeze them."""
        self.model.itm_head.requires_grad_(False)
        for name, module in self.model.text_encoder.named_modules():
            if name.endswith("crossattention"):
                module.requires_grad_(False)

    @property
    def logit_scale(self) -> torch.Tensor:
        """Scalar multiplying cosine similarities: CLIP's ``exp(logit_scale)`` (clamped at 100, as CLIP trains);
        BLIP's ``1 / temp`` (temp clamped to [0.001, 0.5])."""
        if self.kind == "clip":
            return self.model.logit_scale.exp().clamp(max=100.0)
        return 1.0 / self.temp.clamp(0.001, 0.5)

    def encode_images(self, split: KarpathySplit, idx: torch.Tensor, device: torch.device | None = None
                      ) -> torch.Tensor:
        """Images ``idx`` long [B] of ``split`` -> L2-normalised embeddings [B, E] on ``device`` (default: the
        student's): files opened with :meth:`KarpathySplit.load_images`, preprocessed by the model's processor."""
        out = self.encode_image(self.prepare_images(self._load_images(split, _index_list(idx))))
        return out if device is None else out.to(device)

    def _load_images(self, split: KarpathySplit, idx: list[int]) -> list[Any]:
        """PIL images of ``idx``, in order, opened by up to ``image_workers`` threads (contiguous chunks)."""
        workers = min(self.image_workers, len(idx))
        if workers <= 1:
            return split.load_images(idx)
        size = -(-len(idx) // workers)
        with ThreadPoolExecutor(workers) as pool:
            chunks = pool.map(split.load_images, [idx[i : i + size] for i in range(0, len(idx), size)])
            return [image for chunk in chunks for image in chunk]

    def encode_texts(self, split: KarpathySplit, idx: torch.Tensor, device: torch.device | None = None
                     ) -> torch.Tensor:
        """Captions ``idx`` long [B] of ``split`` -> L2-normalised embeddings [B, E] on ``device``; each caption is
        tokenised once per split (cached) and a batch is padded to its longest caption, as :meth:`prepare_texts`."""
        ids, mask = self.caption_tokens(split).batch(_index_list(idx))
        out = self.encode_text(ids, mask)
        return out if device is None else out.to(device)

    def caption_tokens(self, split: KarpathySplit) -> CaptionTokens:
        """The cached tokeniser of ``split``'s captions (one per split object)."""
        entry = self._captions.get(id(split))
        if entry is None or entry[0]() is not split:
            self._captions = {k: v for k, v in self._captions.items() if v[0]() is not None}
            entry = (weakref.ref(split), CaptionTokens(self.processor.tokenizer, split.texts, self.max_text_length))
            self._captions[id(split)] = entry
        return entry[1]

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values float [B, 3, H, W] -> L2-normalised image embeddings [B, E]."""
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        pixel_values = pixel_values.to(self.device, self.dtype)
        if self.kind == "clip":
            features = _pooled(self.model.get_image_features(pixel_values=pixel_values))
        else:
            cls_state = self.model.vision_model(pixel_values=pixel_values).last_hidden_state[:, 0]
            features = self.model.vision_proj(cls_state)
        return F.normalize(features, dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids long [B, T], attention_mask [B, T] -> L2-normalised text embeddings [B, E]."""
        _check_text_inputs(input_ids, attention_mask)
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        if self.kind == "clip":
            features = _pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        else:
            states = self.model.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            features = self.model.text_proj(states[:, 0])
        return F.normalize(features, dim=-1)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(encode_image(pixel_values), encode_text(input_ids, attention_mask))``, ``None`` for a missing input.

        Going through ``forward`` lets a DistributedDataParallel / Accelerate wrapper see the computation.
        """
        image = None if pixel_values is None else self.encode_image(pixel_values)
        text = None if input_ids is None else self.encode_text(input_ids, attention_mask)
        return image, text

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that training updates (everything the dual-encoder path uses)."""
        return [p for p in self.parameters() if p.requires_grad]

    def config_dict(self) -> dict[str, Any]:
        """What rebuilds this adapter (besides the weights)."""
        return {"adapter": "HFStudent", "name_or_path": self.name_or_path, "kind": self.kind,
                "dtype": str(self.dtype).removeprefix("torch."), "max_text_length": self.max_text_length}


def student_from_checkpoint(config: dict[str, Any], weights: dict[str, torch.Tensor], *,
                            device: str | torch.device = "auto") -> HFStudent:
    """Rebuild a trained :class:`HFStudent` from a student checkpoint's ``config`` and ``weights``: the base model
    and processor come from ``config["name_or_path"]`` (which must still be reachable), the weights from the file."""
    student = HFStudent(config["name_or_path"], config["kind"], device=device, dtype=config.get("dtype"),
                        max_text_length=config.get("max_text_length"))
    missing, unexpected = student.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"the checkpoint does not fit {config['name_or_path']!r} ({config['kind']}): "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return student.eval()


@torch.no_grad()
def encode_split(
    student: HFStudent, split: KarpathySplit, *, batch: int = 64, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """All image and caption embeddings of a split, without grad: (image_emb [N, E], text_emb [M, E]) in fp32."""
    from tqdm.auto import tqdm

    check_int("batch", batch, min_value=1)
    was_training = student.training
    student.eval()
    images, texts = [], []
    for start in tqdm(range(0, split.num_images, batch), desc="student images", disable=not progress):
        idx = range(start, min(start + batch, split.num_images))
        images.append(student.encode_image(student.prepare_images(split.load_images(idx))).float())
    for start in tqdm(range(0, split.num_captions, batch), desc="student texts", disable=not progress):
        texts.append(student.encode_text(**student.prepare_texts(split.texts[start : start + batch])).float())
    student.train(was_training)
    return torch.cat(images), torch.cat(texts)
