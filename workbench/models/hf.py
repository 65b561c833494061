"""Adapters for Hugging Face `transformers` models: a BLIP ITM teacher and CLIP / BLIP-ITC students.

Each adapter loads a model and its own processor with ``from_pretrained`` from a hub name (``"openai/clip-vit-
base-patch16"``, ``"Salesforce/blip-itm-base-coco"``) or a local folder written by ``save_pretrained``. A local
folder is loaded with ``local_files_only=True``; with ``HF_HUB_OFFLINE=1`` a hub name is served from the local
cache only. The adapters expose the interfaces of the built-in models:

    student = HFStudent("openai/clip-vit-base-patch16", kind="clip")
    img = student.encode_image(student.prepare_images(pil_images))          # [B, E], L2-normalised
    txt = student.encode_text(**student.prepare_texts(captions))             # [B, E], L2-normalised
    s = student.logit_scale * img @ txt.T                                   # ITC logits [B, B]

    teacher = HFTeacher("Salesforce/blip-itm-base-coco")                    # frozen, eval, bf16 on GPU
    scorer = HFPairScorer(teacher, split)                                    # split: KarpathySplit
    u = scorer(img_idx, cap_idx)                                             # ITM log-odds [P]

Teacher scores are ITM **log-odds** ``u = z_match - z_no_match`` of the ITM head's two logits, so that
``sigmoid(u) = softmax(z)[match]`` is BLIP's match probability, exactly as the built-in teacher's
``sigmoid(logit)``. The teacher runs BLIP's vision transformer once per image (``encode_image``) and only the
text encoder with cross-attention plus the ITM head per pair (``itm``); :class:`HFPairScorer` caches the image
features, so each image is encoded once however many pairs use it.

Students: ``kind="clip"`` is ``CLIPModel`` (``get_image_features`` / ``get_text_features``, learnable
``logit_scale``); ``kind="blip_itc"`` is ``BlipForImageTextRetrieval``'s unimodal (ITC) towers: the vision
[CLS] state through ``vision_proj`` and the text encoder's [CLS] state (no cross-attention) through
``text_proj``, as the model's own ``use_itm_head=False`` path. transformers' BLIP retrieval model carries no
temperature, so the BLIP student adds a learnable ``temp`` (initialised from the config's
``logit_scale_init_value``, i.e. 0.07; clamped to [0.001, 0.5] as BLIP does); the unused ITM head and
cross-attention layers are frozen so that every trainable parameter gets a gradient (DDP needs this).

A fidelity note: transformers' BLIP ITM forward feeds the tokenizer's first token ([CLS]) to the fusion
encoder, while the original BLIP / LAVIS code replaces it by an ``[ENC]`` token; ``HFTeacher(...,
itm_first_token="[ENC]")`` does the latter when the tokenizer has that token.
"""

from __future__ import annotations

import dataclasses
import math
import os
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workbench.checks import check_choice, check_int, check_tensor
from workbench.data.karpathy import KarpathySplit
from workbench.device import pick_device

STUDENT_KINDS = ("clip", "blip_itc")
BLIP_MAX_TEXT_LENGTH = 35
"""Caption length (tokens) of BLIP's retrieval fine-tuning and evaluation in LAVIS; CLIP uses its 77 positions."""

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


# ---------------------------------------------------------------------------------------------- loading


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


# ---------------------------------------------------------------------------------------------- preprocessing


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


# ---------------------------------------------------------------------------------------------- student


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


# ---------------------------------------------------------------------------------------------- teacher


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


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


# ---------------------------------------------------------------------------------------------- pair scorer


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
