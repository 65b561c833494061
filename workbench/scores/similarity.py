"""Similarity top-k in blocks: the primitive under mining, retrieval and re-ranking.

A 5,000 x 25,000 (or 20,000 x 100,000) score matrix never sits in memory at once: queries are processed
``query_block`` rows at a time and the gallery ``gallery_block`` columns at a time, merging a running top-k.
Peak extra memory is about ``query_block x (gallery_block + k)`` int64 order keys plus one float block; the merge
is an exact ``torch.topk`` over keys that encode (score, -index), so results never depend on block sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from workbench.checks import check_int, check_tensor

ExcludeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``exclude(query_idx long [q], gallery_idx long [g]) -> bool [q, g]``, True = never return this pair."""


def topk_similarity(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    *,
    scale: float | torch.Tensor = 1.0,
    exclude: ExcludeFn | None = None,
    query_block: int = 1024,
    gallery_block: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``scale * query @ gallery.T`` per row, computed in blocks, without grad.

    Args:
        query: float [Q, D]; gallery: float [G, D] (same D).
        k: how many to return per query, ``1 <= k <= G``.
        scale: multiplies every score (e.g. the student's logit scale).
        exclude: optional mask function; excluded pairs are never returned.
        query_block, gallery_block: block sizes bounding memory.

    Returns:
        ``(values float [Q, k], indices long [Q, k])`` sorted by value descending (ties: lower index first).
        Where fewer than ``k`` candidates remain after exclusion, trailing entries have value ``-inf`` and
        index ``-1``.
    """
    check_tensor("query", query, ndim=2, dtype="float")
    check_tensor("gallery", gallery, shape=(None, query.shape[1]), dtype="float")
    check_int("k", k, min_value=1, max_value=gallery.shape[0])
    check_int("query_block", query_block, min_value=1)
    check_int("gallery_block", gallery_block, min_value=1)
    values, indices = [], []
    with torch.no_grad():
        for q0 in range(0, query.shape[0], query_block):
            v, i = _topk_rows(query[q0 : q0 + query_block], gallery, k, scale, exclude, q0, gallery_block)
            values.append(v)
            indices.append(i)
    if not values:
        return query.new_empty(0, k), torch.empty(0, k, dtype=torch.long, device=query.device)
    return torch.cat(values), torch.cat(indices)


EMPTY_KEY = torch.iinfo(torch.int64).min
"""The order key of "no candidate" (excluded, or not yet seen): below every real key."""
_LOW32 = 0xFFFFFFFF


def order_key(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Exact int64 sort key: larger key = higher ``values`` (float32), then lower ``index``; all keys distinct.

    ``values`` float32 [..., n] and ``index`` long (broadcastable, ``0 <= index < 2**32``) -> long [..., n].
    The high 32 bits are the float's bits mapped to a signed order (``-0.0`` counts as ``+0.0``), the low 32
    bits ``2**32 - 1 - index``; so a fast ``torch.topk`` over keys reproduces a stable descending sort exactly,
    whatever the block sizes.
    """
    bits = (values.float() + 0.0).view(torch.int32).long()
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotone in the float value, as a signed int
    return ordered * (1 << 32) + (_LOW32 - index)


def decode_order_key(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`order_key`: long [...] -> (values float32 [...], index long [...]).

    ``EMPTY_KEY`` decodes to (-inf, -1).
    """
    ordered = key >> 32
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    values = bits.to(torch.int32).view(torch.float32)
    index = _LOW32 - (key & _LOW32)
    none = key == EMPTY_KEY
    return values.masked_fill(none, float("-inf")), index.masked_fill(none, -1)


def _topk_rows(q, gallery, k, scale, exclude, q0, gallery_block):
    """Running top-k over gallery blocks for one block of queries: q [b, D] -> ([b, k], [b, k])."""
    b = q.shape[0]
    best = torch.full((b, k), EMPTY_KEY, dtype=torch.long, device=q.device)  # order keys [b, k]
    q_idx = torch.arange(q0, q0 + b, device=q.device)
    buffer = None
    for g0 in range(0, gallery.shape[0], gallery_block):
        block, buffer = _score_block(q, gallery[g0 : g0 + gallery_block], scale, buffer)  # float32 [b, g]
        g_idx = torch.arange(g0, g0 + block.shape[1], device=q.device)
        if exclude is not None:
            block.masked_fill_(exclude(q_idx, g_idx).to(q.device), float("-inf"))
        # keys are distinct (score, then lower index first), so merging by topk is exact for any block sizes
        best = torch.topk(torch.cat([best, _block_topk_keys(block, g_idx, k)], dim=1), k, dim=1).values
    best_v, best_i = decode_order_key(best)
    best_i = best_i.masked_fill(torch.isinf(best_v) & (best_v < 0), -1)
    return best_v, best_i


def _score_block(q, g, scale, buffer):
    """``scale * q @ g.T`` as a float32 [b, g] tensor we may overwrite, reusing ``buffer`` when it fits."""
    shape = (q.shape[0], g.shape[0])
    if buffer is not None and tuple(buffer.shape) == shape and buffer.dtype == q.dtype:
        raw = torch.mm(q, g.T, out=buffer)  # reusing memory avoids page-faulting a fresh block each time
    else:
        raw = buffer = q @ g.T
    block = raw.float() if raw.dtype != torch.float32 else raw
    if not (isinstance(scale, int | float) and scale == 1.0):
        block.mul_(torch.as_tensor(scale, dtype=torch.float32, device=block.device))
    return block, buffer


def _block_topk_keys(block: torch.Tensor, g_idx: torch.Tensor, k: int) -> torch.Tensor:
    """Exact top-k order keys of one block: float [b, g] (-inf = excluded) -> long [b, min(k, g)].

    A float ``topk`` is fast but picks arbitrarily among values tied with the k-th. Taking ``k + 1`` values
    shows where such a tie crosses the cut (the (k+1)-th equals the k-th); only those rows are recomputed
    with exact order keys (rare with real embeddings, common in tests with integer embeddings).
    """
    k = min(k, block.shape[1])
    vals, pos = torch.topk(block, min(k + 1, block.shape[1]), dim=1)
    tied = (vals[:, k] == vals[:, k - 1]) & (vals[:, k - 1] > float("-inf")) if vals.shape[1] > k else None
    vals, pos = vals[:, :k], pos[:, :k]
    if tied is not None and tied.any():
        rows = tied.nonzero().squeeze(1)
        exact = torch.topk(order_key(block[rows], g_idx), k, dim=1).indices
        pos[rows] = exact
        vals[rows] = block[rows].gather(1, exact)
    return order_key(vals, g_idx[pos]).masked_fill(vals == float("-inf"), EMPTY_KEY)
