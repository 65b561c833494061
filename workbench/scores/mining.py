"""Hard-negative mining by the student, easy-negative sampling, and a queue of recent embeddings.

CPRD's slates are the student's own top-K hard negatives per query (docs/method.md, "Mining and slates"): ``H_i`` =
the K candidates with the highest student score ``s[i, .]``, positives excluded, computed without grad. Mining runs
in blocks on top of :func:`~workbench.scores.similarity.topk_similarity`, so a 20,000 x 100,000 pool never
materialises its score matrix, and the selection is exactly that of a dense stable sort (ties: lower candidate
index first) whatever the block sizes. (The one caveat is floating point: a matmul of another block shape may round a
score differently in its last bit, which can swap two near-tied candidates; with exact scores nothing changes.)

Where positives come from is an explicit argument, never a guess. :func:`relation_exclude` turns a
:class:`~workbench.data.relations.PairRelation` into the mask for one direction:

- on the built-in world, pass its ground-truth (semantic) relation: every caption that is *true* for an image
  is a positive, so false negatives are never mined;
- on real data (COCO / Flickr30K), pass an :class:`~workbench.data.relations.ImageIdRelation`: a caption is a
  positive only for the image it was written for (true matches written for other images can be mined).

Directions: ``"i2t"`` (queries are images, candidates captions) and ``"t2i"`` (queries captions, candidates
images). Pools may be subsets of a split (a batch, a batch plus an :class:`EmbeddingQueue`): ``query_ids`` and
``candidate_ids`` map pool rows to split indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.checks import check_choice, check_int, check_tensor
from workbench.data.relations import PairRelation
from workbench.scores.similarity import EMPTY_KEY, ExcludeFn, decode_order_key, order_key, topk_similarity

DEFAULT_QUERY_BLOCK = 512
DEFAULT_GALLERY_BLOCK = 8192
"""Default blocks: the transient score block is 512 x 8192 floats (16 MB), whatever the pool size."""


@dataclass(frozen=True)
class Mined:
    """Mined negatives per query, best first.

    Attributes:
        indices: long [Q, K], candidate rows (positions in the pool passed to the miner); -1 where not valid.
        scores: float [Q, K], the student's scores for them (``scale * query @ candidate``); -inf where not valid.
        valid: bool [Q, K], False where fewer than K eligible candidates exist (the trailing entries).
    """

    indices: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("indices", self.indices, ndim=2, dtype=torch.long)
        shape = tuple(self.indices.shape)
        check_tensor("scores", self.scores, shape=shape, dtype="float")
        check_tensor("valid", self.valid, shape=shape, dtype="bool")

    def ids(self, candidate_ids: torch.Tensor) -> torch.Tensor:
        """Map pool rows to split indices: ``candidate_ids`` long [C] -> long [Q, K] (-1 where not valid)."""
        check_tensor("candidate_ids", candidate_ids, ndim=1, dtype="int")
        picked = candidate_ids.to(self.indices.device)[self.indices.clamp(min=0)]
        return picked.masked_fill(~self.valid, -1)


def mine_hard_negatives(
    query: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    *,
    positives: ExcludeFn | None,
    scale: float | torch.Tensor = 1.0,
    query_block: int = DEFAULT_QUERY_BLOCK,
    gallery_block: int = DEFAULT_GALLERY_BLOCK,
) -> Mined:
    """The student's top-``k`` non-positive candidates per query, without grad.

    Args:
        query: float [Q, D] student embeddings of the queries.
        candidates: float [C, D] student embeddings of the candidate pool.
        k: slate size K, ``1 <= k < C``.
        positives: ``exclude(query_rows, candidate_rows) -> bool`` marking each query's positives (see
            :func:`relation_exclude`); ``None`` states that the pool holds no positive of any query.
        scale: the student's logit scale (scores are ``scale * query @ candidates.T``).
        query_block, gallery_block: block sizes bounding memory (results do not depend on them).

    Returns:
        :class:`Mined` with ``indices``/``scores``/``valid`` [Q, K]; never a positive.
    """
    check_tensor("candidates", candidates, ndim=2, dtype="float")
    check_int("k", k, min_value=1)
    if k >= candidates.shape[0]:
        raise ValueError(
            f"k={k} must be smaller than the number of candidates ({candidates.shape[0]}): "
            "mine fewer hard negatives or use a larger pool"
        )
    scores, indices = topk_similarity(
        query, candidates, k, scale=scale, exclude=positives, query_block=query_block, gallery_block=gallery_block
    )
    return Mined(indices=indices, scores=scores, valid=indices >= 0)


@dataclass(frozen=True)
class RelationExclude:
    """``ExcludeFn`` from a relation for one direction; build it with :func:`relation_exclude`."""

    relation: PairRelation
    direction: str
    query_ids: torch.Tensor | None
    candidate_ids: torch.Tensor | None

    def __call__(self, q_idx: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
        """``q_idx`` long [q] pool rows of queries, ``g_idx`` long [g] of candidates -> bool [q, g]."""
        q = _to_split("query", q_idx, self.query_ids)
        g = _to_split("candidate", g_idx, self.candidate_ids)
        if self.direction == "i2t":
            return self.relation.block(q, g)
        return self.relation.block(g, q).T


def _to_split(side: str, rows: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    if ids is None:
        return rows
    if rows.numel() and int(rows.max()) >= ids.numel():
        raise ValueError(
            f"{side}_ids maps {ids.numel()} pool rows, but mining asked about {side} row {int(rows.max())}: "
            f"{side}_ids must have one entry per {side} row"
        )
    return ids.to(rows.device)[rows]


def relation_exclude(
    relation: PairRelation,
    direction: str,
    query_ids: torch.Tensor | None = None,
    candidate_ids: torch.Tensor | None = None,
) -> RelationExclude:
    """The positives mask of ``relation`` (rows = images, columns = captions) for one mining direction.

    Args:
        relation: which pairs match. The built-in world's semantic relation (ground truth: every caption true
            for the image, so false negatives are never mined) or an ``ImageIdRelation`` (real data: a caption
            matches the image it was written for).
        direction: ``"i2t"`` (queries are images, candidates captions) or ``"t2i"`` (the reverse).
        query_ids: long [Q], split index of each query row; ``None`` = the pool is the whole split in order.
        candidate_ids: long [C], split index of each candidate row; ``None`` likewise.

    Returns:
        A callable ``exclude(query_rows long [q], candidate_rows long [g]) -> bool [q, g]`` for the miners.
    """
    check_choice("direction", direction, ["i2t", "t2i"])
    n_query, n_cand = (relation.num_images, relation.num_captions)
    if direction == "t2i":
        n_query, n_cand = n_cand, n_query
    query_ids = _check_ids("query_ids", query_ids, n_query, direction)
    candidate_ids = _check_ids("candidate_ids", candidate_ids, n_cand, direction)
    return RelationExclude(relation, direction, query_ids, candidate_ids)


def _check_ids(name: str, ids: torch.Tensor | None, size: int, direction: str) -> torch.Tensor | None:
    if ids is None:
        return None
    check_tensor(name, ids, ndim=1, dtype="int")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
        raise ValueError(
            f"{name} must hold split indices in [0, {size}) for direction {direction!r}, "
            f"got values in [{int(ids.min())}, {int(ids.max())}]"
        )
    return ids.long()


def sample_easy_negatives(
    query: torch.Tensor,
    candidates: torch.Tensor,
    n: int,
    *,
    beyond_rank: int,
    positives: ExcludeFn | None,
    generator: torch.Generator,
    scale: float | torch.Tensor = 1.0,
    query_block: int = DEFAULT_QUERY_BLOCK,
    gallery_block: int = DEFAULT_GALLERY_BLOCK,
) -> Mined:
    """``n`` negatives per query drawn uniformly, without replacement, from those ranked below ``beyond_rank``.

    The easy slate of the hard-vs-easy ablation (Finding 2): a candidate is eligible when it is not a positive
    and its student rank among non-positives is ``> beyond_rank`` (rank 1 = hardest). Sampling is a running
    top-``n`` over random keys, in blocks; each key is a hash of (seed, query row, candidate row) with the seed
    drawn once from ``generator``, so the draw is deterministic for a generator state and independent of block
    sizes and device.

    Args:
        query: float [Q, D]; candidates: float [C, D].
        n: negatives per query, ``n >= 1``.
        beyond_rank: R >= 0; the top R non-positives are never drawn.
        positives: as in :func:`mine_hard_negatives` (``None``: no positives in the pool).
        generator: source of the seed (advanced by one draw).
        scale, query_block, gallery_block: as in :func:`mine_hard_negatives`.

    Returns:
        :class:`Mined` sorted by student score (descending); ``valid`` False where fewer than ``n`` are eligible.
    """
    check_tensor("query", query, ndim=2, dtype="float")
    check_tensor("candidates", candidates, shape=(None, query.shape[1]), dtype="float")
    check_int("n", n, min_value=1)
    check_int("beyond_rank", beyond_rank, min_value=0)
    check_int("query_block", query_block, min_value=1)
    check_int("gallery_block", gallery_block, min_value=1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    top = _top_ranked(query, candidates, beyond_rank, positives, scale, query_block, gallery_block)
    keys, scores = [], []
    with torch.no_grad():
        for q0 in range(0, query.shape[0], query_block):
            k, s = _sample_rows(query, candidates, n, q0, query_block, gallery_block, top, positives, scale, seed)
            keys.append(k)
            scores.append(s)
    if not keys:
        return Mined(torch.empty(0, n, dtype=torch.long), query.new_empty(0, n).float(), torch.empty(0, n).bool())
    return _sorted_by_score(torch.cat(keys), torch.cat(scores))


def _top_ranked(query, candidates, r, positives, scale, query_block, gallery_block) -> torch.Tensor | None:
    """long [Q, R'] the rows of each query's top ``r`` non-positives, sorted ascending (-1 first); None if r=0."""
    r = min(r, candidates.shape[0])
    if r == 0:
        return None
    _, idx = topk_similarity(
        query, candidates, r, scale=scale, exclude=positives, query_block=query_block, gallery_block=gallery_block
    )
    return idx.sort(dim=1).values


def _sample_rows(query, candidates, n, q0, query_block, gallery_block, top, positives, scale, seed):
    """Running top-``n`` over random keys for query rows ``q0 : q0 + query_block`` -> (keys, scores) [b, n]."""
    q = query[q0 : q0 + query_block]
    b = q.shape[0]
    q_idx = torch.arange(q0, q0 + b, device=q.device)
    best_key = torch.full((b, n), EMPTY_KEY, dtype=torch.long, device=q.device)
    best_s = q.new_full((b, n), float("-inf")).float()
    for g0 in range(0, candidates.shape[0], gallery_block):
        s = ((q @ candidates[g0 : g0 + gallery_block].T).float() * scale).float()  # [b, g]
        g_idx = torch.arange(g0, g0 + s.shape[1], device=q.device)
        eligible = ~_in_rows(top[q0 : q0 + b], g_idx) if top is not None else torch.ones_like(s, dtype=torch.bool)
        if positives is not None:
            eligible &= ~positives(q_idx, g_idx).to(q.device)
        key = _random_keys(seed, q_idx, g_idx) * (1 << 32) + (0xFFFFFFFF - g_idx)
        key = key.masked_fill(~eligible, EMPTY_KEY)
        all_key = torch.cat([best_key, key], dim=1)
        best_key, pick = torch.topk(all_key, n, dim=1)  # keys are distinct: exact for any block sizes
        best_s = torch.cat([best_s, s], dim=1).gather(1, pick)
    return best_key, best_s


def _in_rows(sorted_rows: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """bool [b, g]: is ``g_idx[j]`` among row ``i`` of ``sorted_rows`` long [b, R] (ascending)?"""
    values = g_idx.expand(sorted_rows.shape[0], -1).contiguous()
    pos = torch.searchsorted(sorted_rows, values).clamp(max=sorted_rows.shape[1] - 1)
    return sorted_rows.gather(1, pos) == values


_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64 constants, as signed int64
_M2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser (a bijection of int64 with good avalanche), wrapping arithmetic."""
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


def _random_keys(seed: int, q_idx: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """Uniform pseudo-random int64 in [0, 2**31) for each (query row, candidate row): long [q, g]."""
    per_query = _mix64(seed + q_idx * _GOLDEN)  # wraps: seed < 2**62
    return _srl(_mix64(per_query[:, None] ^ _mix64(g_idx * _GOLDEN)[None, :]), 33)


def _sorted_by_score(keys: torch.Tensor, scores: torch.Tensor) -> Mined:
    """Decode sampled keys and order each row by score (descending, ties lower index first)."""
    valid = keys != EMPTY_KEY
    rows = 0xFFFFFFFF - (keys & 0xFFFFFFFF)
    by_score = order_key(scores, rows.clamp(min=0)).masked_fill(~valid, EMPTY_KEY)
    by_score = by_score.sort(dim=1, descending=True).values
    scores, rows = decode_order_key(by_score)
    return Mined(indices=rows, scores=scores, valid=by_score != EMPTY_KEY)


class EmbeddingQueue:
    """FIFO memory bank of recent student embeddings with their split indices (a MoCo-style queue).

    The trainer mines from "batch + queue": ``torch.cat([batch_emb, queue_emb])`` with ids
    ``torch.cat([batch_ids, queue_ids])``. Embeddings are stored detached. ``tensors()`` returns each id at most
    once (its newest entry) and can leave out the current batch's ids, so no sample is mined twice.

    Args:
        capacity: how many embeddings are kept (the oldest are overwritten).
        dim: embedding size D.
        dtype, device: storage of the embeddings.
    """

    def __init__(self, capacity: int, dim: int, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        check_int("capacity", capacity, min_value=1)
        check_int("dim", dim, min_value=1)
        self._emb = torch.zeros(capacity, dim, dtype=dtype, device=device)
        self._ids = torch.full((capacity,), -1, dtype=torch.long, device=device)
        self._next = 0  # slot written next
        self._size = 0

    @property
    def capacity(self) -> int:
        return self._emb.shape[0]

    def __len__(self) -> int:
        return self._size

    def push(self, emb: torch.Tensor, ids: torch.Tensor) -> None:
        """Append ``emb`` float [B, D] with split indices ``ids`` long [B]; beyond capacity the oldest go."""
        check_tensor("emb", emb, shape=(None, self._emb.shape[1]), dtype="float")
        check_tensor("ids", ids, shape=(emb.shape[0],), dtype="int")
        emb, ids = emb.detach()[-self.capacity :], ids[-self.capacity :]
        slots = (self._next + torch.arange(emb.shape[0], device=self._ids.device)) % self.capacity
        self._emb[slots] = emb.to(self._emb.device, self._emb.dtype)
        self._ids[slots] = ids.to(self._ids.device, torch.long)
        self._next = (self._next + emb.shape[0]) % self.capacity
        self._size = min(self._size + emb.shape[0], self.capacity)

    def tensors(self, *, drop_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(emb [N, D], ids [N])``, oldest first, one entry per id (its newest), without ``drop_ids``."""
        order = (self._next - self._size + torch.arange(self._size, device=self._ids.device)) % self.capacity
        ids = self._ids[order]
        keep = _newest_per_id(ids)
        if drop_ids is not None:
            check_tensor("drop_ids", drop_ids, ndim=1, dtype="int")
            keep &= ~torch.isin(ids, drop_ids.to(ids.device))
        return self._emb[order[keep]], ids[keep]

    def clear(self) -> None:
        """Forget every entry."""
        self._next = self._size = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The stored entries (oldest first), for checkpoints."""
        order = (self._next - self._size + torch.arange(self._size, device=self._ids.device)) % self.capacity
        return {"emb": self._emb[order].clone(), "ids": self._ids[order].clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore entries saved by :meth:`state_dict`."""
        self.clear()
        self.push(state["emb"], state["ids"])


def _newest_per_id(ids: torch.Tensor) -> torch.Tensor:
    """bool [N]: True at the last occurrence of each id in ``ids`` long [N] (ordered oldest first)."""
    if ids.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=ids.device)
    uniq, inverse = torch.unique(ids, return_inverse=True)
    pos = torch.arange(ids.numel(), device=ids.device)
    last = torch.full((uniq.numel(),), -1, dtype=torch.long, device=ids.device).scatter_reduce(0, inverse, pos, "amax")
    return pos == last[inverse]
