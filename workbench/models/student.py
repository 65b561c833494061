"""The built-in dual-encoder student: separate image and text towers, L2-normalised embeddings, ITC logits.

    s[i, j] = logit_scale * <encode_image(image_i), encode_text(caption_j)>

exactly the logits ITC (and every distillation loss) uses. Both towers are small transformers; the image tower
reads the frozen shared stem's 9 patch tokens. Named configurations live in :data:`STUDENT_PRESETS`:

- ``"relation-blind-v1"`` (= ``StudentConfig()``): CLS pooling in both towers, 64-d embeddings. It learns
  colour/shape binding but stays at chance on flipped relations, even from privileged near-miss negatives.
- ``"moments-v1"``: the relation-capable student. No image transformer layers: each of the 9 cell tokens is its
  frozen stem feature plus fixed (row, col) coordinates, projected; the image is pooled to three slots,
  ``[mean_k h_k, mean_k x_k h_k, mean_k y_k h_k]`` (cell coordinates ``x, y`` in [-1, 1]), the smallest pooling
  that keeps "left of" linear; an MLP text head writes into those slots. Still one dot product between two
  vectors: ``s = <img, txt>``.
- ``"cells-v1"``: like ``moments-v1`` but keeping all 9 cells (each projected to ``embed_dim / 9`` and
  concatenated): ``s = sum_k <img_k, txt_k>``.

With 3 image layers before the cell pooling (``image_layers=3``), ``cells-v1`` did not learn flipped relations in
3,000 steps even from privileged near-misses; without them it did (research/room/REPORT.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.checks import check_choice, check_float, check_int
from workbench.data.grammar import MAX_WORDS, PAD, VOCAB
from workbench.models.layers import Block, TextEmbedding
from workbench.models.stem import NUM_PATCHES, PatchStem, StemConfig

IMAGE_POOLS = ("cls", "mean", "cells", "moments")


@dataclass(frozen=True)
class StudentConfig:
    """Sizes of the built-in student (defaults: ~170k trainable parameters)."""

    dim: int = 64  # width of both towers
    embed_dim: int = 64  # size of the joint embedding space
    heads: int = 4
    mlp: int = 128
    image_layers: int = 3
    text_layers: int = 2
    pool: str = "cls"  # image pooling: "cls" | "mean" | "cells" (concat of the 9 cells) | "moments" (3 slots)
    prev_token: bool = True  # add the previous word's embedding to each word (in-text binding)
    init_temperature: float = 0.07  # logit_scale starts at 1 / init_temperature
    max_logit_scale: float = 100.0
    stem: StemConfig = StemConfig()
    # --- options for relation-capable students (defaults: today's relation-blind-v1 student)
    coords: bool = False  # append fixed (row, col) in [-1, 1] to each patch feature before projecting it
    text_pool: str = ""  # "cls" | "mean" | "queries"; "" = ``pool`` for "cls"/"mean", else "cls"
    text_queries: int = 4  # text_pool="queries": learned queries, each attention-pooling the words into one slot
    text_head_hidden: int = 0  # > 0: the text head is LayerNorm -> Linear(dim, h) -> GELU -> Linear(h, embed_dim)
    max_words: int = MAX_WORDS  # longest caption the text tower reads (position embeddings: max_words + 1)

    def __post_init__(self) -> None:
        for name in ("dim", "embed_dim", "heads", "mlp"):
            check_int(name, getattr(self, name), min_value=1)
        check_int("image_layers", self.image_layers, min_value=0)
        check_int("text_layers", self.text_layers, min_value=0)
        if self.dim % self.heads:
            raise ValueError(f"dim must be divisible by heads, got dim={self.dim}, heads={self.heads}")
        check_choice("pool", self.pool, list(IMAGE_POOLS))
        check_choice("text_pool", self.text_pool, ["", "cls", "mean", "queries"])
        check_int("text_queries", self.text_queries, min_value=1)
        check_int("text_head_hidden", self.text_head_hidden, min_value=0)
        check_int("max_words", self.max_words, min_value=1)
        if self.embed_dim % self.slots:
            raise ValueError(f"pool={self.pool!r} splits the embedding into {self.slots} slots: embed_dim must be "
                             f"divisible by {self.slots}, got {self.embed_dim}")
        check_float("init_temperature", self.init_temperature, min_value=0.0, strict_min=True)
        check_float("max_logit_scale", self.max_logit_scale, min_value=1.0)

    @property
    def slots(self) -> int:
        """How many position slots the image embedding has (1 for "cls"/"mean", 9 for "cells", 3 for "moments")."""
        return {"cells": NUM_PATCHES, "moments": 3}.get(self.pool, 1)

    @property
    def text_pooling(self) -> str:
        return self.text_pool or (self.pool if self.pool in ("cls", "mean") else "cls")

    @classmethod
    def from_dict(cls, d: dict) -> StudentConfig:
        d = dict(d)
        d["stem"] = StemConfig(**d.get("stem", {}))
        return cls(**d)


class DualEncoder(nn.Module):
    """Student interface: ``encode_image``, ``encode_text``, ``logit_scale``; the trainer and evaluators read a
    split through ``encode_images(split, idx, device)`` / ``encode_texts(split, idx, device)``."""

    kind = "student"
    embed_batch = 1024  # rows per call when a whole split is embedded

    def __init__(self, config: StudentConfig | None = None, stem: PatchStem | None = None):
        super().__init__()
        self.config = c = config or StudentConfig()
        self.stem = stem or PatchStem(c.stem)
        self.stem.requires_grad_(False)
        self.patch_proj = nn.Linear(c.stem.dim + (2 if c.coords else 0), c.dim)
        self.patch_pos = nn.Parameter(torch.randn(NUM_PATCHES + 1, c.dim) * 0.5)
        self.image_cls = nn.Parameter(torch.randn(1, 1, c.dim) * 0.5)
        self.image_blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp) for _ in range(c.image_layers))
        # per-slot heads ("cells", "moments") project each token to embed_dim / slots
        self.image_head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.embed_dim // c.slots))
        self.text_embed = TextEmbedding(len(VOCAB), c.max_words + 1, c.dim, prev_token=c.prev_token)
        self.text_blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp) for _ in range(c.text_layers))
        text_width = c.dim * (c.text_queries if c.text_pooling == "queries" else 1)
        if c.text_pooling == "queries":  # multi-query attention pooling: each query gathers one slot of words
            self.text_query = nn.Parameter(torch.randn(c.text_queries, c.dim) * 0.5)
            self.text_pool_attn = nn.MultiheadAttention(c.dim, 1, batch_first=True)
            self.text_pool_norm = nn.LayerNorm(c.dim)
        if c.text_head_hidden:
            self.text_head = nn.Sequential(nn.LayerNorm(text_width), nn.Linear(text_width, c.text_head_hidden),
                                           nn.GELU(), nn.Linear(c.text_head_hidden, c.embed_dim))
        else:
            self.text_head = nn.Sequential(nn.LayerNorm(text_width), nn.Linear(text_width, c.embed_dim))
        if c.coords:
            self.register_buffer("cell_xy", cell_coordinates(), persistent=False)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))

    @property
    def logit_scale(self) -> torch.Tensor:
        """Scalar multiplying cosine similarities (exp of a learned log, clamped at ``max_logit_scale``)."""
        return self.log_scale.exp().clamp(max=self.config.max_logit_scale)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def encode_images(self, split, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Images ``idx`` long [B] of a built-in split -> L2-normalised float [B, embed_dim] (run on ``device``)."""
        return self.encode_image(split.images[idx].to(device, non_blocking=True))

    def encode_texts(self, split, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Captions ``idx`` long [B] of a built-in split -> L2-normalised float [B, embed_dim] (run on ``device``).

        The captions are trimmed to the longest of them first (padding tokens are masked keys and never pooled, so
        the embeddings are the same function of the captions; under ``vmap`` the width is kept)."""
        tokens = split.tokens[idx]
        if not torch._C._functorch.is_batchedtensor(tokens):
            tokens = tokens[:, : max(1, int((tokens != PAD).sum(1).max()))] if len(tokens) else tokens
        return self.encode_text(tokens.to(device))

    def embed_order(self, split, kind: str) -> torch.Tensor | None:
        """The order in which to embed a whole split's rows (``kind``: "images" | "texts"): captions by length, so
        that chunks of similar length are trimmed (a third fewer text FLOPs on the built-in world); None = as is."""
        if kind != "texts":
            return None
        return torch.sort((split.tokens != PAD).sum(1), stable=True).indices

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """float [B, 3, 24, 24] -> L2-normalised float [B, embed_dim]."""
        with torch.no_grad():
            feats = self.stem(images)  # [B, 9, stem.dim]
        if self.config.coords:
            feats = torch.cat([feats, self.cell_xy.to(feats.dtype).expand(len(feats), -1, -1)], dim=-1)
        x = torch.cat([self.image_cls.expand(len(feats), -1, -1), self.patch_proj(feats)], dim=1) + self.patch_pos
        for block in self.image_blocks:
            x = block(x)
        pool = self.config.pool
        if pool in ("cls", "mean"):
            pooled = x[:, 0] if pool == "cls" else x[:, 1:].mean(1)
            return F.normalize(self.image_head(pooled), dim=-1)
        cells = self.image_head(x[:, 1:])  # [B, 9, embed_dim / slots]
        if pool == "moments":
            xy = cell_coordinates().to(cells)  # [9, 2]: (row, col) in [-1, 1]
            cells = torch.stack([cells.mean(1), (cells * xy[:, 1:]).mean(1), (cells * xy[:, :1]).mean(1)], 1)
        return F.normalize(cells.flatten(1), dim=-1)  # [B, embed_dim], slot-major

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """long [B, T] ([CLS] first, [PAD]-padded) -> L2-normalised float [B, embed_dim]."""
        pad = tokens == PAD
        x = self.text_embed(tokens)
        for block in self.text_blocks:
            x = block(x, pad=pad)
        if self.config.text_pooling == "queries":
            h = self.text_pool_norm(x)
            q = self.text_query.expand(len(x), -1, -1)
            pooled = self.text_pool_attn(q, h, h, key_padding_mask=pad, need_weights=False)[0].flatten(1)
        elif self.config.text_pooling == "cls":
            pooled = x[:, 0]
        else:
            keep = (~pad).unsqueeze(-1).float()
            pooled = (x * keep).sum(1) / keep.sum(1)
        return F.normalize(self.text_head(pooled), dim=-1)

    def similarity(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """ITC logits float [B_img, B_txt] = logit_scale * cosine."""
        return self.logit_scale * self.encode_image(images) @ self.encode_text(tokens).T

    def config_dict(self) -> dict:
        return asdict(self.config)


def cell_coordinates() -> torch.Tensor:
    """float [9, 2]: (row, col) of each grid cell (row-major, as the stem's patches), scaled to [-1, 1]."""
    from workbench.data.scene import GRID

    idx = torch.arange(NUM_PATCHES)
    return torch.stack([idx // GRID, idx % GRID], 1).float() / (GRID - 1) * 2 - 1


STUDENT_PRESETS: dict[str, StudentConfig] = {
    # today's student: the control that stays at chance on flipped relations
    "relation-blind-v1": StudentConfig(),
    # the relation-capable student: no image layers (each cell's stem feature + its coordinates, projected), pooled
    # to 3 slots (mean, column moment, row moment) x 64; MLP text head; reads chain captions (24 words)
    "moments-v1": StudentConfig(pool="moments", coords=True, embed_dim=192, image_layers=0, text_head_hidden=256,
                                max_words=24),
    # the same with all 9 cells kept (9 x 32): learns relations too, more slowly
    "cells-v1": StudentConfig(pool="cells", coords=True, embed_dim=288, image_layers=0, text_head_hidden=256,
                              max_words=24),
}


def student_preset(name: str, **overrides) -> StudentConfig:
    """A named :class:`StudentConfig` (see :data:`STUDENT_PRESETS`) with field overrides."""
    from dataclasses import replace

    check_choice("student preset", name, list(STUDENT_PRESETS))
    return replace(STUDENT_PRESETS[name], **overrides)
