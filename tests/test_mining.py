"""Hard-negative mining, easy-negative sampling and the embedding queue, checked against naive oracles."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2

from workbench.data.relations import DenseRelation, ImageIdRelation
from workbench.scores.mining import (
    EmbeddingQueue,
    Mined,
    mine_hard_negatives,
    relation_exclude,
    sample_easy_negatives,
)
from workbench.scores.similarity import decode_order_key, order_key, topk_similarity

BLOCKS = [(1, 1), (3, 7), (5, 2), (13, 11), (1000, 1000)]


def _int_embeddings(n: int, d: int, seed: int) -> torch.Tensor:
    """Small-integer embeddings: dot products are exact and full of ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, d), generator=g).float()


def _oracle_topk(scores: torch.Tensor, excluded: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive: stable descending sort of the full masked matrix; -inf entries get index -1."""
    masked = scores.masked_fill(excluded, float("-inf"))
    v, i = torch.sort(masked, dim=1, descending=True, stable=True)
    v, i = v[:, :k], i[:, :k]
    return v, i.masked_fill(torch.isinf(v), -1)


def _caption_image(num_images: int, per_image: int) -> torch.Tensor:
    return torch.arange(num_images).repeat_interleave(per_image)


# --- order keys and blocked top-k ----------------------------------------------------------------------------


def test_order_key_sorts_like_a_stable_descending_sort() -> None:
    values = torch.tensor([0.5, float("-inf"), -0.0, 0.0, 2.0, -3.5, 0.5, float("inf"), -1e-30, 2.0])
    index = torch.arange(values.numel())
    by_key = torch.sort(order_key(values, index), descending=True).indices
    stable = torch.sort(values, descending=True, stable=True).indices
    assert by_key.tolist() == stable.tolist()  # -0.0 and 0.0 tie, broken by index
    decoded_v, decoded_i = decode_order_key(order_key(values, index))
    assert torch.equal(decoded_v, values + 0.0) and torch.equal(decoded_i, index)


@pytest.mark.parametrize("seed", range(6))
def test_blocked_topk_equals_dense_oracle_with_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    Q, C, D = (int(x) for x in torch.randint(1, 30, (3,), generator=g))
    query, cand = _int_embeddings(Q, D % 4 + 1, seed), _int_embeddings(C, D % 4 + 1, seed + 50)
    scale = [1.0, 2.5, torch.tensor([0.5], dtype=torch.float64)][seed % 3]
    excluded = (torch.arange(Q)[:, None] * 3 + torch.arange(C)[None, :]) % 4 == 0
    scores = (query @ cand.T) * (scale.float() if torch.is_tensor(scale) else scale)
    for k in sorted({1, min(4, C), C}):
        want_v, want_i = _oracle_topk(scores, excluded, k)
        for qb, gb in BLOCKS:
            v, i = topk_similarity(query, cand, k, scale=scale, exclude=lambda a, b: excluded[a][:, b],
                                   query_block=qb, gallery_block=gb)
            assert torch.equal(v, want_v), (k, qb, gb)
            assert torch.equal(i, want_i), (k, qb, gb)


# --- mine_hard_negatives ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_mining_matches_oracle_and_never_returns_a_positive(direction: str) -> None:
    images, captions = _int_embeddings(12, 3, 1), _int_embeddings(60, 3, 2)
    relation = ImageIdRelation(_caption_image(12, 5), 12)
    query, cand = (images, captions) if direction == "i2t" else (captions, images)
    positive = relation.dense() if direction == "i2t" else relation.dense().T
    want_v, want_i = _oracle_topk(2.0 * query @ cand.T, positive, 6)
    for qb, gb in BLOCKS:
        mined = mine_hard_negatives(query, cand, 6, positives=relation_exclude(relation, direction), scale=2.0,
                                    query_block=qb, gallery_block=gb)
        assert torch.equal(mined.indices, want_i) and torch.equal(mined.scores, want_v)
        assert mined.valid.all()
        assert not positive.gather(1, mined.indices).any()


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_pool_subset_maps_rows_to_split_indices(direction: str) -> None:
    g = torch.Generator().manual_seed(3)
    matrix = torch.rand(15, 40, generator=g) < 0.3  # a semantic relation: many positives per image and caption
    relation = DenseRelation(matrix)
    img_ids, cap_ids = torch.randperm(15, generator=g)[:9], torch.randperm(40, generator=g)[:25]
    images, captions = _int_embeddings(9, 4, 4), _int_embeddings(25, 4, 5)
    if direction == "i2t":
        query, cand, q_ids, c_ids, positive = images, captions, img_ids, cap_ids, matrix[img_ids][:, cap_ids]
    else:
        query, cand, q_ids, c_ids, positive = captions, images, cap_ids, img_ids, matrix[img_ids][:, cap_ids].T
    exclude = relation_exclude(relation, direction, query_ids=q_ids, candidate_ids=c_ids)
    mined = mine_hard_negatives(query, cand, 5, positives=exclude, query_block=4, gallery_block=3)
    want_v, want_i = _oracle_topk(query @ cand.T, positive, 5)
    assert torch.equal(mined.indices, want_i) and torch.equal(mined.scores, want_v)
    got_pairs = mined.ids(c_ids)
    for row in range(query.shape[0]):
        for cid in got_pairs[row][mined.valid[row]].tolist():
            img, cap = (q_ids[row], cid) if direction == "i2t" else (cid, q_ids[row])
            assert not matrix[img, cap]


def test_fewer_non_positives_than_k_marks_trailing_entries_invalid() -> None:
    matrix = torch.zeros(3, 6, dtype=torch.bool)
    matrix[0, :4] = True  # image 0 has only 2 non-positive captions
    mined = mine_hard_negatives(_int_embeddings(3, 2, 0), _int_embeddings(6, 2, 1), 3,
                                positives=relation_exclude(DenseRelation(matrix), "i2t"))
    assert mined.valid.tolist() == [[True, True, False], [True] * 3, [True] * 3]
    assert mined.indices[0, 2] == -1 and mined.scores[0, 2] == float("-inf")
    assert set(mined.indices[0, :2].tolist()) == {4, 5}
    assert mined.ids(torch.arange(10, 16))[0].tolist()[2] == -1


def test_k_must_be_smaller_than_the_pool() -> None:
    q, c = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"k=5 must be smaller than the number of candidates \(5\)"):
        mine_hard_negatives(q, c, 5, positives=None)
    with pytest.raises(ValueError, match="k must be >= 1"):
        mine_hard_negatives(q, c, 0, positives=None)
    with pytest.raises(ValueError, match="gallery must have shape"):
        mine_hard_negatives(q, torch.randn(5, 2), 2, positives=None)


def test_relation_exclude_rejects_bad_arguments() -> None:
    relation = ImageIdRelation(_caption_image(4, 2), 4)
    with pytest.raises(ValueError, match="direction must be one of"):
        relation_exclude(relation, "x2y")
    with pytest.raises(ValueError, match=r"query_ids must hold split indices in \[0, 8\)"):
        relation_exclude(relation, "t2i", query_ids=torch.tensor([0, 8]))
    exclude = relation_exclude(relation, "i2t", query_ids=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="query_ids maps 2 pool rows, but mining asked about query row 2"):
        mine_hard_negatives(torch.randn(3, 2), torch.randn(8, 2), 2, positives=exclude)


def test_mined_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="valid must have shape"):
        Mined(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))


# --- sample_easy_negatives --------------------------------------------------------------------------------------


def _ranks_among_non_positives(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """long [Q, C]: 1-based rank of each non-positive (stable order), a large value for positives."""
    order = torch.sort(scores.masked_fill(positive, float("-inf")), dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(1, scores.shape[1] + 1).expand_as(order))
    return ranks.masked_fill(positive, 10**9)


def test_easy_negatives_lie_beyond_rank_and_are_never_positive() -> None:
    images, captions = _int_embeddings(10, 3, 7), _int_embeddings(50, 3, 8)
    relation = ImageIdRelation(_caption_image(10, 5), 10)
    exclude = relation_exclude(relation, "i2t")
    easy = sample_easy_negatives(images, captions, 8, beyond_rank=12, positives=exclude,
                                 generator=torch.Generator().manual_seed(0), query_block=3, gallery_block=7)
    assert easy.valid.all()
    ranks = _ranks_among_non_positives(images @ captions.T, relation.dense())
    picked = ranks.gather(1, easy.indices)
    assert (picked > 12).all() and (picked < 10**9).all()
    assert all(len(set(row)) == 8 for row in easy.indices.tolist())  # without replacement
    assert torch.equal(easy.scores, (images @ captions.T).gather(1, easy.indices))
    assert (easy.scores[:, :-1] >= easy.scores[:, 1:]).all()  # sorted by student score


def test_easy_negatives_are_deterministic_and_block_independent() -> None:
    q, c = torch.randn(9, 4), torch.randn(40, 4)

    def draw(seed: int, qb: int, gb: int) -> Mined:
        return sample_easy_negatives(q, c, 5, beyond_rank=3, positives=None,
                                     generator=torch.Generator().manual_seed(seed), query_block=qb, gallery_block=gb)

    a, b, other = draw(1, 4, 6), draw(1, 1000, 1000), draw(2, 4, 6)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.scores, b.scores)  # float matmuls of other block shapes may differ in the last bit
    assert not torch.equal(a.indices, other.indices)
    gen = torch.Generator().manual_seed(1)
    first = sample_easy_negatives(q, c, 5, beyond_rank=3, positives=None, generator=gen)
    second = sample_easy_negatives(q, c, 5, beyond_rank=3, positives=None, generator=gen)
    assert torch.equal(first.indices, a.indices) and not torch.equal(second.indices, first.indices)


def test_easy_negatives_are_roughly_uniform() -> None:
    # 3000 identical queries: each row is an independent draw of 4 from the 23 eligible candidates
    cand = torch.randn(30, 6, generator=torch.Generator().manual_seed(4))
    query = cand[:1].expand(3000, -1).contiguous()
    positive = torch.zeros(30, dtype=torch.bool)
    positive[[0, 11]] = True
    easy = sample_easy_negatives(query, cand, 4, beyond_rank=5, positives=lambda a, b: positive[b].expand(len(a), -1),
                                 generator=torch.Generator().manual_seed(9), query_block=700, gallery_block=13)
    rank = _ranks_among_non_positives(query[:1] @ cand.T, positive[None])[0]
    eligible = (rank > 5) & ~positive
    counts = torch.bincount(easy.indices.flatten(), minlength=30).double()
    assert counts[~eligible].sum() == 0 and int(eligible.sum()) == 23
    expected = 3000 * 4 / 23
    stat = float(((counts[eligible] - expected) ** 2 / expected).sum())
    assert stat < chi2.ppf(0.999, df=22), stat


def test_easy_negatives_invalid_where_too_few_are_eligible() -> None:
    q, c = torch.randn(2, 3), torch.randn(10, 3)
    easy = sample_easy_negatives(q, c, 4, beyond_rank=7, positives=None, generator=torch.Generator().manual_seed(0))
    assert easy.valid.sum(dim=1).tolist() == [3, 3]
    assert (easy.indices[~easy.valid] == -1).all()
    none_left = sample_easy_negatives(q, c, 2, beyond_rank=10, positives=None, generator=torch.Generator())
    assert not none_left.valid.any()
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sample_easy_negatives(q, c, 2, beyond_rank=1, positives=None, generator=0)


# --- EmbeddingQueue ---------------------------------------------------------------------------------------------


def test_queue_is_fifo_with_fixed_capacity() -> None:
    queue = EmbeddingQueue(5, 2)
    assert len(queue) == 0 and queue.tensors()[0].shape == (0, 2)
    queue.push(torch.arange(6.0).reshape(3, 2), torch.tensor([10, 11, 12]))
    queue.push(torch.arange(6.0, 12.0).reshape(3, 2), torch.tensor([13, 14, 15]))
    emb, ids = queue.tensors()
    assert len(queue) == 5 and ids.tolist() == [11, 12, 13, 14, 15]
    assert emb[:, 0].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    queue.push(torch.arange(14.0).reshape(7, 2), torch.arange(20, 27))  # more than the capacity: newest 5 stay
    assert queue.tensors()[1].tolist() == [22, 23, 24, 25, 26]
    assert queue.tensors()[0][0].tolist() == [4.0, 5.0]


def test_queue_drops_batch_ids_and_keeps_the_newest_duplicate() -> None:
    queue = EmbeddingQueue(6, 1)
    queue.push(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([7, 8, 9]))
    queue.push(torch.tensor([[4.0], [5.0]]), torch.tensor([8, 5]))
    emb, ids = queue.tensors()
    assert ids.tolist() == [7, 9, 8, 5] and emb.flatten().tolist() == [1.0, 3.0, 4.0, 5.0]
    emb, ids = queue.tensors(drop_ids=torch.tensor([9, 5]))
    assert ids.tolist() == [7, 8] and emb.flatten().tolist() == [1.0, 4.0]


def test_queue_state_round_trip_and_errors() -> None:
    queue = EmbeddingQueue(4, 3)
    x = torch.randn(6, 3, requires_grad=True)
    queue.push(x, torch.arange(6))
    assert not queue.tensors()[0].requires_grad
    restored = EmbeddingQueue(4, 3)
    restored.load_state_dict(queue.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(queue.tensors(), restored.tensors(), strict=True))
    with pytest.raises(ValueError, match=r"emb must have shape \('\*', 3\)"):
        queue.push(torch.randn(2, 4), torch.arange(2))
    with pytest.raises(ValueError, match=r"ids must have shape \(2,\)"):
        queue.push(torch.randn(2, 3), torch.arange(3))


# --- CUDA parity (run with a GPU: pytest -m gpu) ----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_equal_cpu_results() -> None:
    images, captions = _int_embeddings(300, 8, 11), _int_embeddings(1500, 8, 12)
    relation = ImageIdRelation(_caption_image(300, 5), 300)
    for direction, (q, c) in {"i2t": (images, captions), "t2i": (captions, images)}.items():
        exclude = relation_exclude(relation, direction)
        cpu = mine_hard_negatives(q, c, 16, positives=exclude, query_block=64, gallery_block=500)
        gpu = mine_hard_negatives(q.cuda(), c.cuda(), 16, positives=exclude, query_block=64, gallery_block=500)
        assert torch.equal(gpu.indices.cpu(), cpu.indices) and torch.equal(gpu.scores.cpu(), cpu.scores)
        easy_cpu = sample_easy_negatives(q, c, 8, beyond_rank=20, positives=exclude,
                                         generator=torch.Generator().manual_seed(5))
        easy_gpu = sample_easy_negatives(q.cuda(), c.cuda(), 8, beyond_rank=20, positives=exclude,
                                         generator=torch.Generator().manual_seed(5))
        assert torch.equal(easy_gpu.indices.cpu(), easy_cpu.indices)
    queue = EmbeddingQueue(4, 8, device="cuda")
    queue.push(images[:6].cuda(), torch.arange(6).cuda())
    assert queue.tensors()[1].tolist() == [2, 3, 4, 5] and queue.tensors()[0].is_cuda
