"""The cross-fusion teacher's ITM logit for many pairs, with everything that depends on one side only computed once.

In a ``fusion="cross"`` :class:`~workbench.models.teacher.CrossEncoder` the words attend to each other and then to
the image patches, layer by layer, and the ITM head reads the [CLS] state of the last layer. For a pair
``(image i, caption j)`` three parts of that computation do not depend on the pair:

- the first fusion layer's self-attention sub-layer sees only the caption: ``h_j = txt_j + attn(norm1(txt_j))``
  (:func:`caption_states`, once per caption);
- every layer's cross-attention keys and values are projections of the image encoding alone
  (:func:`image_keys_values`, once per image);
- the last layer only has to produce the [CLS] state: one query row in its self- and cross-attention, and the MLP on
  that row only.

:func:`cls_logits` runs the rest for a chunk of pairs. The result is the same function as
``teacher.itm(img[i], txt[j], pad[j])`` (equal to float rounding: ``tests/test_models.py`` compares them), at about
half the work on the built-in world. The pair scorer's captions of one call have one length and no padding (it
groups and trims them), so it applies no attention mask; the dense teacher's chunks may hold shorter captions and
pass their padding. The softmax over the 9 patches is written out because PyTorch's CPU softmax is slow on rows
that short.

Shapes: ``d`` model width, ``h`` heads, ``L`` fusion layers, ``T`` words + 1, ``S = 9`` patches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workbench.models.layers import Attention, Block


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """[B, T, d] -> [B, h, T, d / h]."""
    b, t, d = x.shape
    return x.reshape(b, t, h, d // h).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, h, T, d / h] -> [B, T, d]."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


def _short_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last dimension (faster on a CPU than ``Tensor.softmax`` for rows of ~9)."""
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def caption_states(block: Block, txt: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """The first fusion block's residual stream after its self-attention.

    txt [M, T, d], pad bool [M, T] -> [M, T, d]."""
    return txt + block.attn(block.norm1(txt), pad=pad)


def image_keys_values(blocks, img: torch.Tensor) -> torch.Tensor:
    """Every fusion block's cross-attention keys and values of the patches: img [N, S, d] -> [N, L, 2, h, S, d / h]."""
    out = []
    for block in blocks:
        attn = block.cross
        d = attn.dim
        k, v = F.linear(img, attn.in_proj_weight[d:], attn.in_proj_bias[d:]).chunk(2, dim=-1)
        out.append(torch.stack([_heads(k, attn.heads), _heads(v, attn.heads)], dim=1))
    return torch.stack(out, dim=1)


def _attend(attn: Attention, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax) -> torch.Tensor:
    """Attention of query [B, Tq, d] over keys/values [B, h, S, d / h] -> [B, Tq, d]; ``softmax`` normalises the
    scores [B, h, Tq, S] (and masks them, where keys are padding)."""
    d = attn.dim
    q = _heads(F.linear(query, attn.in_proj_weight[:d], attn.in_proj_bias[:d]), attn.heads)
    weights = softmax((q * (1.0 / math.sqrt(d // attn.heads))) @ k.transpose(-1, -2))
    return attn.out_proj(_merge(weights @ v))


def _masked_softmax(pad: torch.Tensor | None):
    """Softmax over keys with the padding keys (pad bool [B, S], True at padding) given no weight."""
    if pad is None:
        return lambda s: s.softmax(dim=-1)
    return lambda s: s.masked_fill(pad[:, None, None, :], float("-inf")).softmax(dim=-1)


def _self_attention(block: Block, x: torch.Tensor, pad: torch.Tensor | None, cls_only: bool) -> torch.Tensor:
    """x + self-attention; with ``cls_only`` only the [CLS] row: x [B, T, d], pad bool [B, T] -> [B, T or 1, d]."""
    attn, y = block.attn, block.norm1(x)
    d = attn.dim
    k, v = F.linear(y, attn.in_proj_weight[d:], attn.in_proj_bias[d:]).chunk(2, dim=-1)
    rows = slice(0, 1) if cls_only else slice(None)
    return x[:, rows] + _attend(attn, y[:, rows], _heads(k, attn.heads), _heads(v, attn.heads), _masked_softmax(pad))


def cls_logits(teacher, states: torch.Tensor, kv: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
    """ITM logits float [P] of aligned pairs from :func:`caption_states` [P, T, d] and :func:`image_keys_values`
    [P, L, 2, h, S, d / h]; ``pad`` bool [P, T] marks padding words (None: captions of one length, no padding)."""
    blocks = teacher.fusion_blocks
    x = states
    for layer, block in enumerate(blocks):
        last = layer == len(blocks) - 1
        if layer > 0:
            x = _self_attention(block, x, pad, cls_only=last)
        elif last:
            x = x[:, :1]
        x = x + _attend(block.cross, block.norm_c(x), kv[:, layer, 0], kv[:, layer, 1], _short_softmax)
        x = x + block.mlp(block.norm2(x))
    return teacher.itm_from_fused(x)
