"""The built-in dual-encoder student: separate image and text towers, L2-normalised embeddings, ITC logits.

    s[i, j] = logit_scale * <encode_image(image_i), encode_text(caption_j)>

exactly the logits ITC (and every distillation loss) uses. Both towers are small transformers with CLS
pooling; the image tower reads the frozen shared stem's 9 patch tokens.
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


@dataclass(frozen=True)
class StudentConfig:
    """Sizes of the built-in student (defaults: ~170k trainable parameters)."""

    dim: int = 64  # width of both towers
    embed_dim: int = 64  # size of the joint embedding space
    heads: int = 4
    mlp: int = 128
    image_layers: int = 3
    text_layers: int = 2
    pool: str = "cls"  # "cls" or "mean"
    prev_token: bool = True  # add the previous word's embedding to each word (in-text binding)
    init_temperature: float = 0.07  # logit_scale starts at 1 / init_temperature
    max_logit_scale: float = 100.0
    stem: StemConfig = StemConfig()

    def __post_init__(self) -> None:
        for name in ("dim", "embed_dim", "heads", "mlp"):
            check_int(name, getattr(self, name), min_value=1)
        check_int("image_layers", self.image_layers, min_value=0)
        check_int("text_layers", self.text_layers, min_value=0)
        if self.dim % self.heads:
            raise ValueError(f"dim must be divisible by heads, got dim={self.dim}, heads={self.heads}")
        check_choice("pool", self.pool, ["cls", "mean"])
        check_float("init_temperature", self.init_temperature, min_value=0.0, strict_min=True)
        check_float("max_logit_scale", self.max_logit_scale, min_value=1.0)

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
        self.patch_proj = nn.Linear(c.stem.dim, c.dim)
        self.patch_pos = nn.Parameter(torch.randn(NUM_PATCHES + 1, c.dim) * 0.5)
        self.image_cls = nn.Parameter(torch.randn(1, 1, c.dim) * 0.5)
        self.image_blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp) for _ in range(c.image_layers))
        self.image_head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.embed_dim))
        self.text_embed = TextEmbedding(len(VOCAB), MAX_WORDS + 1, c.dim, prev_token=c.prev_token)
        self.text_blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp) for _ in range(c.text_layers))
        self.text_head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.embed_dim))
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
            feats = self.stem(images)
        x = torch.cat([self.image_cls.expand(len(feats), -1, -1), self.patch_proj(feats)], dim=1) + self.patch_pos
        for block in self.image_blocks:
            x = block(x)
        pooled = x[:, 0] if self.config.pool == "cls" else x[:, 1:].mean(1)
        return F.normalize(self.image_head(pooled), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """long [B, T] ([CLS] first, [PAD]-padded) -> L2-normalised float [B, embed_dim]."""
        pad = tokens == PAD
        x = self.text_embed(tokens)
        for block in self.text_blocks:
            x = block(x, pad=pad)
        if self.config.pool == "cls":
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
