"""Small transformer building blocks shared by the built-in teacher and student.

Attention is written with plain batched matmuls (:class:`Attention`) rather than ``nn.MultiheadAttention``: the same
parameters (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), the same initialisation (RNG draws in the same
order) and the same formula, so checkpoints load unchanged, but it runs under ``torch.func.vmap`` (the batched
trainer stacks many students' weights) and, at these sequence lengths (10-25 tokens), faster than the fused kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters, initialisation and math (batch first).

    ``softmax(q k^T / sqrt(d_head) + mask) v`` per head, with ``q, k, v`` from one packed input projection
    ``in_proj_weight [3d, d]`` and the output projection ``out_proj``; keys where ``pad`` is True get no weight.

    Shapes: ``query`` [B, T, d]; ``context`` [B, S, d] (None: self-attention); ``pad`` bool [B, S].
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)  # first, as nn.MultiheadAttention: the same RNG draws in the same order
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor | None = None,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = query.shape
        h = self.heads
        if context is None:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_kv = self.in_proj_weight.split([d, 2 * d])
            b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
            q = F.linear(query, w_q, b_q)
            k, v = F.linear(context, w_kv, b_kv).chunk(2, dim=-1)
        s = k.shape[1]
        q = q.reshape(b, t, h, d // h).transpose(1, 2)  # [B, h, T, d_h]
        k = k.reshape(b, s, h, d // h).transpose(1, 2)
        v = v.reshape(b, s, h, d // h).transpose(1, 2)
        scores = (q * (1.0 / math.sqrt(d // h))) @ k.transpose(-1, -2)  # [B, h, T, S]
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        if self.dropout and self.training:
            weights = F.dropout(weights, self.dropout)
        out = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(out)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, optional cross-attention, MLP.

    Shapes: ``x`` [B, T, d]; ``context`` [B, S, d]; ``pad`` bool [B, T] True at padding (keys ignored).
    """

    def __init__(self, dim: int, heads: int, mlp: int, cross: bool = False, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.cross = Attention(dim, heads, dropout=dropout) if cross else None
        self.norm_c = nn.LayerNorm(dim) if cross else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pad=pad)
        if self.cross is not None:
            if context is None:
                raise ValueError("this block has cross-attention: context must be a [B, S, d] tensor, got None")
            x = x + self.cross(self.norm_c(x), context)
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
        """tokens long [B, T] -> float [B, T, d]; ``T`` at most the ``max_len`` positions it was built with."""
        if tokens.shape[-1] > self.pos.shape[0]:
            raise ValueError(f"captions of {tokens.shape[-1]} tokens, but this text tower reads at most "
                             f"{self.pos.shape[0]} (its config's max_words + 1): use a model whose max_words fits the "
                             "world's captions (chain-caption worlds: 24, e.g. the moments-v1 student preset)")
        x = self.word(tokens) + self.pos[: tokens.shape[1]]
        if self.prev is not None:
            prev = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
            x = x + self.prev(prev)
        return self.norm(x)
