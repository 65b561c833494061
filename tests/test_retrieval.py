"""Retrieval metrics: hand-written score matrices with known R@K, blocked vs dense oracle, re-ranking properties,
Spearman against scipy."""

from __future__ import annotations

import pytest
import scipy.stats
import torch

from workbench.data.relations import DenseRelation, ImageIdRelation, PairRelation
from workbench.evaluation.retrieval import (
    format_table,
    graded_spearman,
    metrics_from_matrix,
    pair_similarity,
    recall_from_topk,
    rerank_metrics,
    rerank_slate,
    retrieval_metrics,
    score_pairs,
)
from workbench.scores.similarity import topk_similarity

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
    ),
]

# ---------------------------------------------------------------------------------------------- hand cases

# Case A: 4 images x 8 captions, two captions per image. Caption 2 (written for image 1) is also true for
# image 0, so the semantic protocol counts hits the COCO one misses.
S_A = torch.tensor(
    [
        # c0 c1 c2 c3 c4 c5 c6 c7
        [5, 1, 9, 0, 2, 3, 4, 6],  # img0: c2 c7 c0 ... -> own c0 at rank 2; semantic c2 at rank 0
        [1, 2, 3, 8, 0, 4, 5, 6],  # img1: c3 first -> rank 0
        [9, 8, 7, 6, 1, 0, 5, 4],  # img2: own c4 at rank 6 -> miss at 3
        [0, 1, 2, 3, 4, 5, 6, 7],  # img3: c7 first -> rank 0
    ],
    dtype=torch.float32,
)
CAP_IMG_A = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
# t2i, own image's rank per caption (ties -> lower image index first):
#   c0 [5,1,9,0]: img2,img0 -> 1 | c1 [1,2,8,1]: img2,img1,img0(tie with img3, lower first) -> 2
#   c2 [9,3,7,2]: img0,img2,img1 -> 2 (semantic: img0 -> 0) | c3 [0,8,6,3] -> 0 | c4 [2,0,1,4]: img3,img0,img2 -> 2
#   c5 [3,4,0,5]: img3,img1,img0,img2 -> 3 | c6 [4,5,5,6] -> 0 | c7 [6,6,4,7] -> 0
EXPECTED_A = {
    "coco": {"r1_i2t": 50.0, "r3_i2t": 75.0, "r1_t2i": 37.5, "r3_t2i": 87.5, "rsum": 250.0},
    "semantic": {"r1_i2t": 75.0, "r3_i2t": 75.0, "r1_t2i": 50.0, "r3_t2i": 87.5, "rsum": 287.5},
}

# Case B: 3 images x 6 captions, uneven caption counts (3, 1, 2). Semantic extras: caption 0 is true for
# image 1, caption 3 is true for image 2.
S_B = torch.tensor(
    [
        # c0   c1   c2   c3   c4   c5
        [0.1, 0.2, 0.3, 0.9, 0.8, 0.7],  # img0: c3 c4 c5 c2 -> own rank 3 (both protocols)
        [0.6, 0.1, 0.2, 0.5, 0.0, 0.3],  # img1: c0 c3 -> own c3 rank 1; semantic c0 rank 0
        [0.2, 0.4, 0.1, 0.6, 0.5, 0.3],  # img2: c3 c4 -> own c4 rank 1; semantic c3 rank 0
    ]
)
CAP_IMG_B = torch.tensor([0, 0, 0, 1, 2, 2])
# t2i: c0 [.1,.6,.2] own img0 rank 2 (semantic img1 rank 0) | c1 [.2,.1,.4] rank 1 | c2 [.3,.2,.1] rank 0
#      c3 [.9,.5,.6] own img1 rank 2 (semantic img2 rank 1) | c4 [.8,0,.5] rank 1
#      c5 [.7,.3,.3] img0, img1 (tie, lower first), img2 -> rank 2
EXPECTED_B = {
    "coco": {"r1_i2t": 0.0, "r2_i2t": 200 / 3, "r1_t2i": 100 / 6, "r2_t2i": 50.0},
    "semantic": {"r1_i2t": 200 / 3, "r2_i2t": 200 / 3, "r1_t2i": 200 / 6, "r2_t2i": 500 / 6},
}
for _m in EXPECTED_B.values():
    _m["rsum"] = sum(_m.values())


def relations_a() -> dict[str, PairRelation]:
    semantic = ImageIdRelation(CAP_IMG_A, 4).dense()
    semantic[0, 2] = True
    return {"coco": ImageIdRelation(CAP_IMG_A, 4), "semantic": DenseRelation(semantic)}


def relations_b() -> dict[str, PairRelation]:
    semantic = ImageIdRelation(CAP_IMG_B, 3).dense()
    semantic[1, 0] = semantic[2, 3] = True
    return {"coco": ImageIdRelation(CAP_IMG_B, 3), "semantic": DenseRelation(semantic)}


CASES = [(S_A, relations_a, (1, 3), EXPECTED_A), (S_B, relations_b, (1, 2), EXPECTED_B)]


def assert_metrics_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert list(got[name]) == list(want[name]), name
        for key, value in want[name].items():
            assert got[name][key] == pytest.approx(value, abs=1e-9), (name, key)


@pytest.mark.parametrize("scores, relations, ks, expected", CASES)
def test_metrics_from_matrix_hand_cases(scores, relations, ks, expected):
    assert_metrics_close(metrics_from_matrix(scores, relations(), ks=ks), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scores, relations, ks, expected", CASES)
def test_retrieval_metrics_hand_cases(scores, relations, ks, expected, device):
    # text_emb = identity, so image_emb @ text_emb.T reproduces the hand-written matrix exactly (ties included)
    N, M = scores.shape
    image_emb, text_emb = scores.to(device), torch.eye(M, device=device)
    got = retrieval_metrics(image_emb, text_emb, relations(), ks=ks, query_block=2, gallery_block=3)
    assert_metrics_close(got, expected)


def test_recall_from_topk_hand_case_with_empty_slots():
    rel = ImageIdRelation(torch.tensor([0, 0, 1, 2]), 3)  # captions 0,1 -> img0; 2 -> img1; 3 -> img2
    i2t = torch.tensor([[2, 1, 3], [0, -1, -1], [3, 0, 1]])  # img0 hit at 1, img1 never, img2 hit at 0
    assert recall_from_topk(i2t, "i2t", rel, ks=(1, 2)) == pytest.approx({"r1_i2t": 100 / 3, "r2_i2t": 200 / 3})
    t2i = torch.tensor([[1, 0], [0, 2], [-1, -1], [2, 0]])  # c0 hit at 1, c1 at 0, c2 never, c3 at 0
    assert recall_from_topk(t2i, "t2i", rel, ks=(2, 1)) == {"r1_t2i": 50.0, "r2_t2i": 75.0}


# ---------------------------------------------------------------------------------------------- blocked vs dense


def random_setup(seed: int, N: int = 23, M: int = 57, D: int = 8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    image_emb = torch.nn.functional.normalize(torch.randn(N, D, generator=g, dtype=dtype), dim=1)
    text_emb = torch.nn.functional.normalize(torch.randn(M, D, generator=g, dtype=dtype), dim=1)
    caption_image = torch.randperm(M, generator=g) % N
    coco = ImageIdRelation(caption_image, N)
    semantic = coco.dense() | (torch.rand(N, M, generator=g) < 0.1)
    return image_emb, text_emb, {"coco": coco, "semantic": DenseRelation(semantic)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocked_retrieval_equals_dense_oracle(seed, device):
    image_emb, text_emb, relations = random_setup(seed)
    image_emb, text_emb = image_emb.to(device), text_emb.to(device)
    want = metrics_from_matrix(image_emb @ text_emb.T, relations)
    for qb, gb in [(1, 1), (4, 5), (1000, 1000)]:
        got = retrieval_metrics(image_emb, text_emb, relations, scale=7.0, query_block=qb, gallery_block=gb)
        assert_metrics_close(got, want)
    assert list(want["coco"]) == ["r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum"]
    assert 0.0 < want["coco"]["rsum"] < want["semantic"]["rsum"] <= 600.0


@pytest.mark.parametrize("k, qb, gb", [(1, 3, 4), (5, 7, 3), (9, 2, 11), (12, 64, 64), (3, 50, 40)])
@pytest.mark.parametrize("with_exclusion", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_topk_similarity_breaks_ties_like_a_stable_sort(k, qb, gb, with_exclusion, device):
    # the fast path of topk_similarity (torch.topk + tie repair) must pick and order exactly like a stable sort;
    # small integer embeddings make ties at the k-th place common, and the exclusion mask leaves rows short
    g = torch.Generator().manual_seed(k)
    query = torch.randint(-1, 2, (50, 2), generator=g).float()
    gallery = torch.randint(-1, 2, (40, 2), generator=g).float()
    excluded = (torch.rand(50, 40, generator=g) < 0.9) & with_exclusion
    excluded[0, :] = with_exclusion
    exclude = (lambda q, c: excluded[q.cpu()][:, c.cpu()]) if with_exclusion else None
    values, indices = topk_similarity(query.to(device), gallery.to(device), k, exclude=exclude, query_block=qb,
                                      gallery_block=gb)
    values, indices = values.cpu(), indices.cpu()
    scores = (query @ gallery.T).masked_fill(excluded, float("-inf"))
    want_v, want_i = torch.sort(scores, dim=1, descending=True, stable=True)
    want_v, want_i = want_v[:, :k], want_i[:, :k].masked_fill(torch.isinf(want_v[:, :k]), -1)
    assert torch.equal(values, want_v)
    assert torch.equal(indices, want_i)


def test_semantic_superset_never_lowers_recall():
    for seed in range(5):
        image_emb, text_emb, relations = random_setup(seed, dtype=torch.float32)
        out = retrieval_metrics(image_emb, text_emb, relations, ks=(1, 2, 5))
        for key in out["coco"]:
            assert out["semantic"][key] >= out["coco"][key]


# ---------------------------------------------------------------------------------------------- re-ranking


class CountingScorer:
    """Wraps a pair scorer; records every batch it sees and whether grad was enabled."""

    def __init__(self, fn):
        self.fn, self.batches, self.grad_seen = fn, [], False

    def __call__(self, img, cap):
        self.batches.append((img.clone(), cap.clone()))
        self.grad_seen |= torch.is_grad_enabled()
        return self.fn(img, cap)

    @property
    def pairs(self) -> int:
        return sum(b[0].numel() for b in self.batches)


def test_rerank_slate_hand_case():
    s_val = torch.tensor([[9.0, 6.0, 5.0], [3.0, 2.0, 1.0]])
    s_idx = torch.tensor([[2, 7, 0], [4, 5, 6]])
    u_val = torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])  # row 1: teacher ties -> student order kept
    assert rerank_slate(s_val, s_idx, u_val).tolist() == [[7, 0, 2], [4, 5, 6]]
    # itm+itc, weight 1: 9, 7, 5.5 -> student order; weight 0.1: 0.9, 1.6, 1.0 -> [7, 0, 2]
    assert rerank_slate(s_val, s_idx, u_val, fusion="itm+itc").tolist() == [[2, 7, 0], [4, 5, 6]]
    assert rerank_slate(s_val, s_idx, u_val, fusion="itm+itc", itc_weight=0.1).tolist()[0] == [7, 0, 2]


def test_rerank_hand_case_oracle_teacher():
    # Case A, k_test = 3: an oracle teacher lifts every positive in the top 3 to rank 1, so the re-ranked R@1
    # equals the student's R@3, and R@3 itself is unchanged.
    relations = relations_a()
    oracle = relations["coco"].pairs
    out = rerank_metrics(S_A, torch.eye(8), relations, lambda i, c: oracle(i, c).float(), k_test=3, ks=(1, 3),
                         progress=False)
    coco = EXPECTED_A["coco"]
    assert out["coco"]["r1_i2t"] == coco["r3_i2t"] == out["coco"]["r3_i2t"]
    assert out["coco"]["r1_t2i"] == coco["r3_t2i"] == out["coco"]["r3_t2i"]
    # semantic positives the COCO oracle scores 0 stay in student order behind the COCO positive
    assert out["semantic"]["r3_i2t"] == EXPECTED_A["semantic"]["r3_i2t"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_rerank_oracle_teacher_property(seed, device):
    image_emb, text_emb, relations = random_setup(seed)
    image_emb, text_emb = image_emb.to(device), text_emb.to(device)
    k_test = 6
    student = retrieval_metrics(image_emb, text_emb, relations, ks=(1, 3, k_test))
    for name, relation in relations.items():
        scorer = CountingScorer(lambda i, c, rel=relation: rel.pairs(i, c).to(torch.float64))
        out = rerank_metrics(image_emb, text_emb, relations, scorer, k_test=k_test, ks=(1, 3, k_test),
                             batch_size=7, progress=False)
        for d in ("i2t", "t2i"):
            assert out[name][f"r1_{d}"] == pytest.approx(student[name][f"r{k_test}_{d}"])
            for proto in relations:  # the set of the first k_test is the teacher's to re-order, never to change
                assert out[proto][f"r{k_test}_{d}"] == pytest.approx(student[proto][f"r{k_test}_{d}"])
        assert not scorer.grad_seen
        assert max(b[0].numel() for b in scorer.batches) <= 7


@pytest.mark.parametrize("fusion", ["itm", "itm+itc"])
def test_rerank_with_student_as_teacher_changes_nothing(fusion):
    image_emb, text_emb, relations = random_setup(3)
    scale = 5.0
    student = retrieval_metrics(image_emb, text_emb, relations, ks=(1, 5, 10), scale=scale)
    scorer = CountingScorer(lambda i, c: pair_similarity(image_emb, text_emb, i, c, scale=scale))
    out = rerank_metrics(image_emb, text_emb, relations, scorer, k_test=12, fusion=fusion, scale=scale,
                         dedupe=False, batch_size=50, progress=False)
    assert out.pop("teacher_pairs") == scorer.pairs == (23 + 57) * 12
    assert_metrics_close(out, student)


def test_rerank_dedupe_counts_distinct_pairs_and_matches_plain():
    image_emb, text_emb, relations = random_setup(4)
    N, M, k_test = 23, 57, 10
    g = torch.Generator().manual_seed(0)
    table = torch.randn(N, M, generator=g, dtype=torch.float64)  # an arbitrary teacher
    plain, deduped = CountingScorer(lambda i, c: table[i, c]), CountingScorer(lambda i, c: table[i, c])
    out_plain = rerank_metrics(image_emb, text_emb, relations, plain, k_test=k_test, dedupe=False, progress=False)
    out_dedup = rerank_metrics(image_emb, text_emb, relations, deduped, k_test=k_test, batch_size=16, progress=False)
    # distinct pairs over both directions' slates, computed independently with Python sets
    scores = image_emb @ text_emb.T
    i2t = {(i, c) for i in range(N) for c in scores[i].topk(k_test).indices.tolist()}
    t2i = {(i, c) for c in range(M) for i in scores[:, c].topk(k_test).indices.tolist()}
    assert out_plain["teacher_pairs"] == plain.pairs == (N + M) * k_test
    assert out_dedup["teacher_pairs"] == deduped.pairs == len(i2t | t2i) < (N + M) * k_test
    del out_plain["teacher_pairs"], out_dedup["teacher_pairs"]
    seen = {(i, c) for img, cap in deduped.batches for i, c in zip(img.tolist(), cap.tolist(), strict=True)}
    assert seen == i2t | t2i
    assert_metrics_close(out_dedup, out_plain)
    # an arbitrary teacher does change the ranking, as it should
    student = retrieval_metrics(image_emb, text_emb, relations)
    assert any(out_plain[p][k] != student[p][k] for p in relations for k in ("r1_i2t", "r1_t2i"))


# ---------------------------------------------------------------------------------------------- Spearman


@pytest.mark.parametrize("seed", range(4))
def test_graded_spearman_matches_scipy_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    relevance = torch.randint(0, 4, (200,), generator=g)  # graded, many ties
    scores = relevance.double() + torch.randn(200, generator=g, dtype=torch.float64)
    scores = (scores * 2).round() / 2  # ties in the scores too
    want = scipy.stats.spearmanr(scores.numpy(), relevance.numpy()).statistic
    assert graded_spearman(scores, relevance) == pytest.approx(want, abs=1e-12)


def test_graded_spearman_hand_cases():
    rel = torch.tensor([0, 1, 1, 2])
    assert graded_spearman(torch.tensor([0.1, 0.5, 0.5, 0.9]), rel) == pytest.approx(1.0)
    assert graded_spearman(torch.tensor([0.9, 0.5, 0.5, 0.1]), rel) == pytest.approx(-1.0)
    # ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): rho = 4.5 / sqrt(4.5 * 5)
    assert graded_spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), rel) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert graded_spearman(torch.ones(4), rel) != graded_spearman(torch.ones(4), rel)  # nan: undefined


# ---------------------------------------------------------------------------------------------- table, scoring


def test_format_table_layout():
    image_emb, text_emb, relations = random_setup(0, dtype=torch.float32)
    student = retrieval_metrics(image_emb, text_emb, relations)
    reranked = rerank_metrics(image_emb, text_emb, relations, lambda i, c: (i == i).float(), k_test=10,
                              progress=False)
    table = format_table({"student": student, "student+teacher": reranked}, decimals=2)
    assert list(table.index) == ["student", "student+teacher"]
    assert table.loc["student", ("coco", "rsum")] == pytest.approx(student["coco"]["rsum"], abs=0.005)
    assert ("teacher_pairs", "") in table.columns
    assert table.columns.names == ["protocol", "metric"]


def test_score_pairs_rejects_bad_scorer_output():
    img, cap = torch.arange(5), torch.arange(5)
    with pytest.raises(ValueError, match=r"pair_scorer\(img_idx, cap_idx\) must have shape"):
        score_pairs(lambda i, c: torch.zeros(len(i) + 1), img, cap, batch_size=2)
    with pytest.raises(ValueError, match="must be finite"):
        score_pairs(lambda i, c: torch.full((len(i),), float("nan")), img, cap)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ks": (1, 9)}, r"each of ks must be <= the gallery size min\(N, M\) = 4"),
        ({"ks": (0, 1)}, r"each of ks \(0, 1\) must be >= 1"),
        ({"ks": ()}, "at least one cut-off"),
        ({"ks": (1.0,)}, "must be an int"),
        ({"ks": 5}, "ks must be a sequence"),
        ({"ks": (1, 3), "scale": -1.0}, "scale must be > 0"),
    ],
)
def test_retrieval_metrics_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        retrieval_metrics(S_A, torch.eye(8), relations_a(), **kwargs)


def test_retrieval_metrics_bad_embeddings_and_relations():
    rel = relations_a()
    with pytest.raises(ValueError, match=r"text_emb must have shape \('\*', 8\)"):
        retrieval_metrics(S_A, torch.eye(8)[:, :5], rel)
    with pytest.raises(ValueError, match="image_emb must have dtype float"):
        retrieval_metrics(S_A.long(), torch.eye(8), rel)
    with pytest.raises(ValueError, match="share dtype"):
        retrieval_metrics(S_A, torch.eye(8, dtype=torch.float64), rel)
    with pytest.raises(ValueError, match=r"relations\['coco'\] must relate N = 3 images x M = 8 captions"):
        retrieval_metrics(S_A[:3], torch.eye(8), rel)
    with pytest.raises(TypeError, match=r"relations\['x'\] must be a PairRelation"):
        retrieval_metrics(S_A, torch.eye(8), {"x": torch.ones(4, 8, dtype=torch.bool)})
    with pytest.raises(ValueError, match="relations must be a non-empty dict"):
        retrieval_metrics(S_A, torch.eye(8), {})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k_test": 2, "ks": (1, 3)}, "each of ks must be <= k_test = 2"),
        ({"k_test": 5}, "k_test must be <= 4"),
        ({"k_test": 3, "ks": (1,), "fusion": "itc"}, r"fusion must be one of \['itm', 'itm\+itc'\]"),
        ({"k_test": 3, "ks": (1,), "batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_rerank_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rerank_metrics(S_A, torch.eye(8), relations_a(), lambda i, c: i.float(), progress=False, **kwargs)


def test_recall_from_topk_bad_arguments():
    rel = ImageIdRelation(CAP_IMG_A, 4)
    with pytest.raises(ValueError, match=r"query_dir must be one of \['i2t', 't2i'\]"):
        recall_from_topk(torch.zeros(4, 3, dtype=torch.long), "x2y", rel)
    with pytest.raises(ValueError, match="one row per t2i query \\(8"):
        recall_from_topk(torch.zeros(4, 3, dtype=torch.long), "t2i", rel, ks=(1,))
    with pytest.raises(ValueError, match="number of columns of topk_idx"):
        recall_from_topk(torch.zeros(4, 3, dtype=torch.long), "i2t", rel, ks=(1, 5))
