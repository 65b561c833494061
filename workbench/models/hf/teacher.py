"""The cross-encoder teacher on `transformers`: BLIP's ITM head, and its pair scorer with cached image features
(see :mod:`workbench.models.hf`)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from workbench.checks import check_int, check_tensor
from workbench.data.karpathy import KarpathySplit
from workbench.device import pick_device
from workbench.models.hf.loading import (
    CaptionTokens,
    _auto_processor,
    _check_text_inputs,
    _check_texts,
    _jsonable,
    _load,
    _load_model,
    _max_text_length,
    _model_name,
    _Preprocessing,
    resolve_dtype,
)


class HFTeacher(_Preprocessing):
    """BLIP's cross-encoder (``BlipForImageTextRetrieval`` with its ITM head) as a frozen teacher.

    The model is frozen (``requires_grad_(False)``), kept in eval mode and run under ``no_grad``; on CUDA it runs
    in bf16 (fp16 where bf16 is unsupported), on CPU in fp32. Scores are ITM log-odds (see the module docstring).

    Args:
        name_or_path: hub name (e.g. ``"Salesforce/blip-itm-base-coco"``) or local folder (model + processor).
        device: "auto" (CUDA when available), "cpu", "cuda", ...
        dtype: weights' dtype; default bf16/fp16 on CUDA, fp32 elsewhere.
        max_text_length: caption tokens kept (default 35, as LAVIS).
        itm_first_token: ``None`` feeds the tokenizer's first token ([CLS]) to the fusion encoder, as
            transformers' forward does; a token such as ``"[ENC]"`` replaces it, as the original BLIP does.
    """

    kind = "teacher"

    def __init__(
        self,
        name_or_path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str | None = None,
        max_text_length: int | None = None,
        itm_first_token: str | None = None,
    ):
        from transformers import BlipForImageTextRetrieval

        self.name_or_path = os.fspath(name_or_path)
        self.device = pick_device(device) if isinstance(device, str) else torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device, low_precision_on_gpu=True)
        model = _load_model(BlipForImageTextRetrieval, name_or_path, "blip", "teacher model")
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.processor = _load(_auto_processor(), name_or_path, "teacher processor")
        self.max_text_length = _max_text_length(self.model, "teacher", max_text_length)
        self.itm_first_token = itm_first_token
        self._first_id = None if itm_first_token is None else self._token_id(itm_first_token)

    def _token_id(self, token: str) -> int:
        tokenizer = self.processor.tokenizer
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
            raise ValueError(f"itm_first_token={token!r} is not in the teacher tokenizer's vocabulary")
        return token_id

    def _eval(self) -> None:
        if self.model.training:
            self.model.eval()

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values float [N, 3, H, W] -> image_embeds [N, S, D] (the vision transformer's states; BLIP-base at
        384 px: S = 577, D = 768), in the teacher's dtype on its device."""
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        self._eval()
        pixel_values = pixel_values.to(self.device, self.dtype)
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    @torch.no_grad()
    def itm_logits(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The ITM head's two logits float32 [P, 2] (no-match, match) for aligned pairs.

        Args:
            image_embeds: [P, S, D] from :meth:`encode_image`; input_ids, attention_mask: [P, T].
        """
        check_tensor("image_embeds", image_embeds, ndim=3, dtype="float")
        _check_text_inputs(input_ids, attention_mask)
        if input_ids.shape[0] != image_embeds.shape[0]:
            raise ValueError(
                f"image_embeds and input_ids must hold the same number of pairs, got {image_embeds.shape[0]} "
                f"and {input_ids.shape[0]}"
            )
        self._eval()
        input_ids = input_ids.to(self.device)
        if self._first_id is not None:
            input_ids = input_ids.clone()
            input_ids[:, 0] = self._first_id
        image_embeds = image_embeds.to(self.device, self.dtype)
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=self.device)
        states = self.model.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask.to(self.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        return self.model.itm_head(states[:, 0]).float()

    def itm(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """ITM log-odds float32 [P] (``z_match - z_no_match``) for aligned pairs; see :meth:`itm_logits`."""
        logits = self.itm_logits(image_embeds, input_ids, attention_mask)
        return logits[:, 1] - logits[:, 0]

    @staticmethod
    def probability(log_odds: torch.Tensor) -> torch.Tensor:
        """Match probability ``sigmoid(u)`` (= BLIP's ``softmax(itm_logits)[:, 1]``) from ITM log-odds."""
        return torch.sigmoid(log_odds)

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """ITM log-odds float32 [P] of aligned pairs (P PIL images, P captions), without any caching."""
        _check_texts(texts)
        if len(images) != len(texts):
            raise ValueError(f"images and texts must pair up, got {len(images)} images and {len(texts)} texts")
        tokens = self.prepare_texts(texts)
        return self.itm(self.encode_image(self.prepare_images(images)), tokens["input_ids"], tokens["attention_mask"])

    def pair_scorer(self, split: KarpathySplit, **kwargs: Any) -> HFPairScorer:
        """An :class:`HFPairScorer` over ``split`` (keyword arguments: its ``batch``, ``image_batch``,
        ``max_cached_images``, ``cache_device``)."""
        return HFPairScorer(self, split, **kwargs)

    def fingerprint_config(self) -> dict[str, Any]:
        """The teacher interface's name for :meth:`config_for_fingerprint`."""
        return self.config_for_fingerprint()

    def config_for_fingerprint(self) -> dict[str, Any]:
        """What besides the weights determines the scores, for the score store's fingerprint
        (``workbench.scores.fingerprint.fingerprint_module(teacher.model, teacher.config_for_fingerprint())``)."""
        image_processor = self.processor.image_processor
        return {
            "adapter": "HFTeacher",
            "model": _model_name(self.name_or_path),
            "class": type(self.model).__name__,
            "dtype": str(self.dtype).removeprefix("torch."),
            "score": "itm_log_odds",
            "max_text_length": self.max_text_length,
            "itm_first_token": self.itm_first_token,
            "image_size": _jsonable(getattr(image_processor, "size", None)),
            "image_mean": _jsonable(getattr(image_processor, "image_mean", None)),
            "image_std": _jsonable(getattr(image_processor, "image_std", None)),
        }


class HFPairScorer:
    """Scores (image index, caption index) pairs of a :class:`KarpathySplit` with an :class:`HFTeacher`.

    ``scorer(img long [P], cap long [P]) -> ITM log-odds float32 [P]`` (on CPU); ``scorer.probability(...)`` gives
    match probabilities. Each image's ``image_embeds`` are computed on demand, ``image_batch`` images at a time,
    and cached, so an image is encoded once however many pairs use it; each caption is tokenised once. Pairs are
    fused ``batch`` at a time.

    Memory: the cache holds ``S x D`` values per image in the teacher's dtype: 577 x 768 for BLIP-base at 384 px,
    0.89 MB in bf16: ~0.9 GB for Flickr30K's 1K test images, ~4.4 GB for COCO's 5K, ~100 GB for COCO's 113K
    training images. For training sets pass ``max_cached_images`` (least recently used images are dropped and
    re-encoded when needed again) and/or ``cache_device="cpu"``.

    Counters: ``pairs_scored`` (pairs fused), ``images_encoded`` (vision passes, one per image unless evicted).
    """

    def __init__(
        self,
        teacher: HFTeacher,
        split: KarpathySplit,
        *,
        batch: int = 64,
        image_batch: int = 32,
        max_cached_images: int | None = None,
        cache_device: str | torch.device | None = None,
    ):
        if not isinstance(teacher, HFTeacher):
            raise TypeError(f"teacher must be an HFTeacher, got {type(teacher).__name__}")
        if not isinstance(split, KarpathySplit):
            raise TypeError(f"split must be a KarpathySplit, got {type(split).__name__}")
        self.teacher, self.split = teacher, split
        self.batch = check_int("batch", batch, min_value=1)
        self.image_batch = check_int("image_batch", image_batch, min_value=1)
        if max_cached_images is not None:
            check_int("max_cached_images", max_cached_images, min_value=1)
        self.max_cached_images = max_cached_images
        self.cache_device = teacher.device if cache_device is None else torch.device(cache_device)
        self._images: OrderedDict[int, torch.Tensor] = OrderedDict()  # image index -> [S, D]
        self._tokens = CaptionTokens(teacher.processor.tokenizer, split.texts, teacher.max_text_length)
        self.pairs_scored = 0
        self.images_encoded = 0

    @torch.no_grad()
    def __call__(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """img long [P], cap long [P] (split indices) -> ITM log-odds float32 [P] on CPU."""
        self._check_indices(img, cap)
        img, cap = img.cpu(), cap.cpu()
        out = []
        for i, c in zip(img.split(self.batch), cap.split(self.batch), strict=True):
            ids, mask = self._token_batch(c.tolist())
            out.append(self.teacher.itm(self._image_batch(i.tolist()), ids, mask).cpu())
            self.pairs_scored += len(i)
        return torch.cat(out) if out else torch.empty(0)

    def probability(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """Match probabilities float32 [P] of the pairs."""
        return HFTeacher.probability(self(img, cap))

    def by_ids(self, image_ids: torch.Tensor, caption_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-odds [P], probabilities [P]) for global ids (``imgid``, ``sentid``) of this split: the ``compute``
        function of ``TeacherScoreStore.get_or_compute``. Karpathy ids are not contiguous; they are mapped with
        :meth:`KarpathySplit.image_index` / :meth:`KarpathySplit.caption_index`."""
        logits = self(self.split.image_index(image_ids), self.split.caption_index(caption_ids))
        return logits, HFTeacher.probability(logits)

    @property
    def cached_images(self) -> int:
        return len(self._images)

    def _check_indices(self, img: torch.Tensor, cap: torch.Tensor) -> None:
        check_tensor("img", img, ndim=1, dtype="int")
        check_tensor("cap", cap, shape=(img.shape[0],), dtype="int")
        for name, idx, size in (("img", img, self.split.num_images), ("cap", cap, self.split.num_captions)):
            if idx.numel() and (idx.min() < 0 or idx.max() >= size):
                raise IndexError(
                    f"{name} must hold indices in [0, {size}) of split {self.split.name!r}, "
                    f"got values in [{idx.min().item()}, {idx.max().item()}]"
                )

    def _image_batch(self, img: list[int]) -> torch.Tensor:
        """image_embeds [P, S, D] on the teacher's device, encoding (and caching) images not yet cached."""
        embeds = {i: self._images[i] for i in dict.fromkeys(img) if i in self._images}
        for i in embeds:
            self._images.move_to_end(i)
        missing = [i for i in dict.fromkeys(img) if i not in embeds]
        for start in range(0, len(missing), self.image_batch):
            chunk = missing[start : start + self.image_batch]
            pixels = self.teacher.prepare_images(self.split.load_images(chunk))
            for i, e in zip(chunk, self.teacher.encode_image(pixels), strict=True):
                embeds[i] = e.to(self.cache_device).clone()
            self.images_encoded += len(chunk)
        for i in missing:
            self._remember(i, embeds[i])
        return torch.stack([embeds[i] for i in img]).to(self.teacher.device)

    def _remember(self, i: int, embeds: torch.Tensor) -> None:
        self._images[i] = embeds
        if self.max_cached_images is not None and len(self._images) > self.max_cached_images:
            self._images.popitem(last=False)

    def _token_batch(self, cap: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids long [P, T], attention_mask long [P, T]) padded to the batch's longest caption."""
        return self._tokens.batch(cap)
