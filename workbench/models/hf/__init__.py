"""Adapters for Hugging Face `transformers` models: a BLIP ITM teacher and CLIP / BLIP-ITC students.

Modules: :mod:`~workbench.models.hf.teacher` (``HFTeacher``, ``HFPairScorer``), :mod:`~workbench.models.hf.student`
(``HFStudent``), :mod:`~workbench.models.hf.loading` (hub / local loading, dtypes, caption tokens).

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

from workbench.models.hf.loading import BLIP_MAX_TEXT_LENGTH, CaptionTokens, hub_offline, resolve_dtype
from workbench.models.hf.student import STUDENT_KINDS, HFStudent, encode_split, student_from_checkpoint
from workbench.models.hf.teacher import HFPairScorer, HFTeacher

__all__ = [
    "BLIP_MAX_TEXT_LENGTH",
    "STUDENT_KINDS",
    "CaptionTokens",
    "HFPairScorer",
    "HFStudent",
    "HFTeacher",
    "encode_split",
    "hub_offline",
    "resolve_dtype",
    "student_from_checkpoint",
]
