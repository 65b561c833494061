"""Similarity top-k in blocks: the primitive under mining, retrieval and re-ranking.

A 5,000 x 25,000 (or 20,000 x 100,000) score matrix never sits in memory at once: queries are processed
``query_block`` rows at a time and the gallery ``gallery_block`` columns at a time, merging a running top-k.
Peak extra memory is about ``query_block x (gallery_block + k)`` floats.
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


def _topk_rows(q, gallery, k, scale, exclude, q0, gallery_block):
    """Running top-k over gallery blocks for one block of queries: q [b, D] -> ([b, k], [b, k])."""
    b = q.shape[0]
    best_v = q.new_full((b, k), float("-inf"))
    best_i = torch.full((b, k), -1, dtype=torch.long, device=q.device)
    q_idx = torch.arange(q0, q0 + b, device=q.device)
    for g0 in range(0, gallery.shape[0], gallery_block):
        block = (q @ gallery[g0 : g0 + gallery_block].T).float() * scale  # [b, g]
        g_idx = torch.arange(g0, g0 + block.shape[1], device=q.device)
        if exclude is not None:
            block = block.masked_fill(exclude(q_idx, g_idx).to(q.device), float("-inf"))
        cat_v = torch.cat([best_v, block], dim=1)
        cat_i = torch.cat([best_i, g_idx.expand(b, -1)], dim=1)
        # stable sort keeps earlier (lower-index) entries first among ties
        order = torch.sort(cat_v, dim=1, descending=True, stable=True).indices[:, :k]
        best_v, best_i = cat_v.gather(1, order), cat_i.gather(1, order)
    best_i = best_i.masked_fill(torch.isinf(best_v) & (best_v < 0), -1)
    return best_v, best_i
