"""Small transformer building blocks shared by the built-in teacher and student."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, optional cross-attention, MLP.

    Shapes: ``x`` [B, T, d]; ``context`` [B, S, d]; ``pad`` bool [B, T] True at padding (keys ignored).
    """

    def __init__(self, dim: int, heads: int, mlp: int, cross: bool = False, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if cross else None
        self.norm_c = nn.LayerNorm(dim) if cross else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        if self.cross is not None:
            if context is None:
                raise ValueError("this block has cross-attention: context must be a [B, S, d] tensor, got None")
            x = x + self.cross(self.norm_c(x), context, context, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TextEmbedding(nn.Module):
    """Word + position embeddings (equally loud), optionally plus the previous word's embedding.

    Adding the previous word helps in-text binding ("red" next to "square"); position embeddings as loud as word
    embeddings keep word order visible (a prototype with 50x quieter positions learned a bag of words).
    """

    def __init__(self, vocab: int, max_len: int, dim: int, prev_token: bool = True, init_std: float = 0.5):
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * init_std)
        self.prev = nn.Embedding(vocab, dim) if prev_token else None
        nn.init.normal_(self.word.weight, std=init_std)
        if self.prev is not None:
            nn.init.normal_(self.prev.weight, std=init_std)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens long [B, T] -> float [B, T, d]."""
        x = self.word(tokens) + self.pos[: tokens.shape[1]]
        if self.prev is not None:
            prev = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
            x = x + self.prev(prev)
        return self.norm(x)
