"""Retrieval evaluation: R@K in two protocols, teacher re-ranking, and a graded ranking score.

Conventions (rows = images, columns = captions, as in :mod:`workbench.data.relations`):

- ``i2t``: queries are the N images, the gallery is the M captions; ``t2i``: queries are the M captions, the
  gallery is the N images. Scores are ``scale * image_emb @ text_emb.T`` (pass L2-normalised embeddings to
  rank by cosine; ``scale`` never changes a ranking, it only matters when student scores are fused with
  teacher scores).
- A *protocol* is a :class:`~workbench.data.relations.PairRelation`. The COCO protocol is
  :class:`~workbench.data.relations.ImageIdRelation` (an image hits if one of *its* captions is in the top K, a
  caption hits if *its* image is); the semantic protocol counts a hit for any item the caption is true for.
- ``R@K`` is the percentage (0..100) of queries with at least one positive among their first K results. Every
  query counts in the denominator: a query with no positive in the gallery is a miss. Ties are broken by the
  lower gallery index, the same rule as :func:`workbench.scores.similarity.topk_similarity`.
- ``rsum`` is the sum of all R@K of both directions (R@1 + R@5 + R@10, twice, for the default ``ks``).

Memory: :func:`retrieval_metrics` and :func:`rerank_metrics` only ever hold a ``query_block x gallery_block``
block of scores plus the ``[Q, max(ks)]`` (or ``[Q, k_test]``) top-k, never the N x M matrix
(``benchmarks/retrieval_memory.py`` measures this). One top-k per direction is shared by all protocols.

Teacher re-ranking follows LAVIS (ALBEF/BLIP evaluation): the student's top ``k_test`` per query are scored by
the cross-encoder and re-ordered by that score (``fusion="itm"``) or by teacher + ``itc_weight`` x student
(``fusion="itm+itc"``, BLIP's choice); ranks beyond ``k_test`` keep the student order, so with
``max(ks) <= k_test`` only the re-ordered slate matters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from scipy.stats import spearmanr

from workbench.checks import check_choice, check_float, check_int, check_tensor
from workbench.data.relations import PairRelation
from workbench.scores.similarity import topk_similarity

PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``pair_scorer(img_idx long [P], cap_idx long [P]) -> float [P]``: the teacher's score (e.g. ITM logit)."""

DIRECTIONS = ("i2t", "t2i")
FUSIONS = ("itm", "itm+itc")


# ---------------------------------------------------------------------------------------------- R@K from top-k


def recall_from_topk(
    topk_idx: torch.Tensor,
    query_dir: str,
    relation: PairRelation,
    ks: Iterable[int] = (1, 5, 10),
) -> dict[str, float]:
    """R@K of one direction from each query's ranked gallery indices.

    Args:
        topk_idx: long [Q, k], row ``q`` = gallery indices ranked for query ``q`` (best first); ``-1`` marks an
            empty slot (never a hit). Q = N images for ``"i2t"``, M captions for ``"t2i"``.
        query_dir: ``"i2t"`` or ``"t2i"``.
        relation: which (image, caption) pairs are hits.
        ks: cut-offs, each in ``[1, k]``.

    Returns:
        ``{"r{K}_{query_dir}": percentage}`` for each K in ascending order.
    """
    check_choice("query_dir", query_dir, DIRECTIONS)
    check_tensor("topk_idx", topk_idx, ndim=2, dtype="int")
    num_queries = relation.num_images if query_dir == "i2t" else relation.num_captions
    if topk_idx.shape[0] != num_queries:
        raise ValueError(
            f"topk_idx must have one row per {query_dir} query ({num_queries}, from the relation), "
            f"got shape {tuple(topk_idx.shape)}"
        )
    ks = _check_ks(ks, topk_idx.shape[1], "the number of columns of topk_idx")
    first = _first_hit_rank(topk_idx, query_dir, relation)  # [Q]
    return {f"r{k}_{query_dir}": _percent(first < k) for k in ks}


def _first_hit_rank(topk_idx: torch.Tensor, query_dir: str, relation: PairRelation) -> torch.Tensor:
    """long [Q]: 0-based position of the first hit in each row, or ``k`` (one past the end) if none."""
    Q, k = topk_idx.shape
    query = torch.arange(Q, device=topk_idx.device).unsqueeze(1).expand(Q, k)
    empty = topk_idx < 0
    gallery = topk_idx.masked_fill(empty, 0)
    img, cap = (query, gallery) if query_dir == "i2t" else (gallery, query)
    hits = relation.pairs(img.reshape(-1), cap.reshape(-1)).reshape(Q, k).to(topk_idx.device) & ~empty
    position = torch.arange(k, device=topk_idx.device).expand(Q, k)
    return position.masked_fill(~hits, k).min(dim=1).values


def _percent(hit: torch.Tensor) -> float:
    return 100.0 * hit.double().mean().item() if hit.numel() else float("nan")


# ---------------------------------------------------------------------------------------------- student metrics


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    relations: Mapping[str, PairRelation],
    *,
    ks: Iterable[int] = (1, 5, 10),
    scale: float | torch.Tensor = 1.0,
    query_block: int = 256,
    gallery_block: int = 8192,
) -> dict[str, dict[str, float]]:
    """R@K in both directions for each protocol, from embeddings, computed in blocks.

    Args:
        image_emb: float [N, D]; text_emb: float [M, D] (same D, dtype and device).
        relations: protocol name -> relation over N images x M captions, e.g.
            ``{"semantic": world_relation, "coco": ImageIdRelation(caption_image, N)}``.
        ks: cut-offs, positive and at most ``min(N, M)``.
        scale: positive logit scale (does not change rankings).
        query_block, gallery_block: block sizes of :func:`topk_similarity`; peak extra memory is about
            ``query_block x (gallery_block + max(ks))`` scores plus sort buffers.

    Returns:
        ``{protocol: {"r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", ..., "rsum"}}``.
    """
    N, M = _check_embeddings(image_emb, text_emb, relations)
    ks = _check_ks(ks, min(N, M), f"the gallery size min(N, M) = {min(N, M)}")
    scale = _check_scale(scale)
    student = _student_topk(image_emb, text_emb, max(ks), scale, query_block, gallery_block)
    ranked = {d: idx for d, (_, idx) in student.items()}
    return {name: _protocol_metrics(ranked, relation, ks) for name, relation in relations.items()}


def _student_topk(image_emb, text_emb, k, scale, query_block, gallery_block):
    """One blocked top-k per direction: {"i2t": (float [N, k], long [N, k]), "t2i": ([M, k], [M, k])}."""
    return {
        direction: topk_similarity(
            query, gallery, k, scale=scale, query_block=query_block, gallery_block=gallery_block
        )
        for direction, query, gallery in (("i2t", image_emb, text_emb), ("t2i", text_emb, image_emb))
    }


def metrics_from_matrix(
    scores: torch.Tensor,
    relations: Mapping[str, PairRelation],
    *,
    ks: Iterable[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """The same metrics as :func:`retrieval_metrics` from a dense score matrix (small tests, oracle).

    Independent of the blocked path: ranks come from a full stable sort of each row and hits from
    ``relation.dense()``.

    Args:
        scores: float [N, M], rows = images, columns = captions.
        relations: protocol name -> relation over N images x M captions.
        ks: cut-offs, positive and at most ``min(N, M)``.
    """
    check_tensor("scores", scores, ndim=2, dtype="float")
    N, M = scores.shape
    _check_relations(relations, N, M)
    ks = _check_ks(ks, min(N, M), f"the gallery size min(N, M) = {min(N, M)}")
    out = {}
    for name, relation in relations.items():
        truth = relation.dense().to(scores.device)  # bool [N, M]
        first = {"i2t": _dense_first_hit(scores, truth), "t2i": _dense_first_hit(scores.T, truth.T)}
        metrics = {f"r{k}_{d}": _percent(first[d] < k) for d in DIRECTIONS for k in ks}
        out[name] = {**metrics, "rsum": sum(metrics.values())}
    return out


def _dense_first_hit(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """scores float [Q, G], truth bool [Q, G] -> long [Q]: rank of the first true item (G if none)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranked_truth = truth.gather(1, order)
    has_hit = ranked_truth.any(dim=1)
    first = ranked_truth.long().argmax(dim=1)
    return torch.where(has_hit, first, torch.full_like(first, scores.shape[1]))


def _protocol_metrics(
    ranked: Mapping[str, torch.Tensor], relation: PairRelation, ks: tuple[int, ...]
) -> dict[str, float]:
    """``ranked[d]`` long [Q_d, >= max(ks)] for d in i2t/t2i -> R@K of both directions and rsum."""
    metrics: dict[str, float] = {}
    for direction in DIRECTIONS:
        metrics.update(recall_from_topk(ranked[direction], direction, relation, ks))
    metrics["rsum"] = sum(metrics.values())
    return metrics


# ---------------------------------------------------------------------------------------------- re-ranking


def rerank_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    relations: Mapping[str, PairRelation],
    pair_scorer: PairScorer,
    *,
    k_test: int = 16,
    ks: Iterable[int] = (1, 5, 10),
    fusion: str = "itm",
    itc_weight: float = 1.0,
    scale: float | torch.Tensor = 1.0,
    batch_size: int = 1024,
    dedupe: bool = True,
    query_block: int = 256,
    gallery_block: int = 8192,
    progress: bool = True,
) -> dict[str, Any]:
    """R@K after the teacher re-ranks the student's top ``k_test`` of every query (LAVIS protocol).

    Args:
        image_emb: float [N, D]; text_emb: float [M, D] (the student's embeddings).
        relations: protocol name -> relation over N images x M captions.
        pair_scorer: ``(img_idx long [P], cap_idx long [P]) -> float [P]``, the teacher's score for each pair;
            called with at most ``batch_size`` pairs at a time, under ``torch.no_grad()``.
        k_test: slate size re-ranked per query, in ``[max(ks), min(N, M)]``.
        ks: cut-offs, each ``<= k_test``.
        fusion: ``"itm"`` re-orders by the teacher score; ``"itm+itc"`` by teacher + ``itc_weight`` x student
            score (``scale * <image, text>``). Ties keep the student order.
        itc_weight: weight of the student score under ``"itm+itc"``.
        scale: the student's positive logit scale.
        batch_size: pairs per ``pair_scorer`` call.
        dedupe: score each distinct (image, caption) pair once even if it is in both directions' slates.
        query_block, gallery_block: block sizes of the student's top-k.
        progress: show a tqdm bar over the teacher batches.

    Returns:
        ``{protocol: {"r1_i2t", ..., "rsum"}, ..., "teacher_pairs": int}``, the last being the number of pairs
        given to ``pair_scorer`` (``(N + M) * k_test`` without ``dedupe``, at most that with it).
    """
    N, M = _check_embeddings(image_emb, text_emb, relations)
    k_test = check_int("k_test", k_test, min_value=1, max_value=min(N, M))
    ks = _check_ks(ks, k_test, f"k_test = {k_test}")
    check_choice("fusion", fusion, FUSIONS)
    itc_weight = check_float("itc_weight", itc_weight)
    check_int("batch_size", batch_size, min_value=1)
    scale = _check_scale(scale)
    student = _student_topk(image_emb, text_emb, k_test, scale, query_block, gallery_block)
    teacher, calls = _teacher_slates(student, pair_scorer, N, M, batch_size, dedupe, progress)
    ranked = {
        d: rerank_slate(s_val, s_idx, teacher[d], fusion=fusion, itc_weight=itc_weight)
        for d, (s_val, s_idx) in student.items()
    }
    out: dict[str, Any] = {name: _protocol_metrics(ranked, relation, ks) for name, relation in relations.items()}
    out["teacher_pairs"] = calls
    return out


def rerank_slate(
    s_val: torch.Tensor,
    s_idx: torch.Tensor,
    u_val: torch.Tensor,
    *,
    fusion: str = "itm",
    itc_weight: float = 1.0,
) -> torch.Tensor:
    """Re-order each query's student slate by the teacher: long [Q, K] gallery indices, best first.

    Args:
        s_val: float [Q, K] student scores of the slate, in student order (descending).
        s_idx: long [Q, K] gallery indices of the slate.
        u_val: float [Q, K] teacher scores of the same entries.
        fusion: ``"itm"`` sorts by ``u_val``; ``"itm+itc"`` by ``u_val + itc_weight * s_val``.
        itc_weight: weight of the student score under ``"itm+itc"``.

    Ties keep the student order (stable sort).
    """
    check_tensor("s_val", s_val, ndim=2, dtype="float")
    check_tensor("s_idx", s_idx, shape=tuple(s_val.shape), dtype="int")
    check_tensor("u_val", u_val, shape=tuple(s_val.shape), dtype="float")
    check_choice("fusion", fusion, FUSIONS)
    fused = u_val if fusion == "itm" else u_val + check_float("itc_weight", itc_weight) * s_val  # [Q, K]
    order = torch.sort(fused, dim=1, descending=True, stable=True).indices
    return s_idx.gather(1, order)


def _slate_pairs(student: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions' slates as (img long [P], cap long [P]), i2t rows first, then t2i rows."""
    imgs, caps = [], []
    for direction in DIRECTIONS:
        idx = student[direction][1]
        Q, k = idx.shape
        query = torch.arange(Q, device=idx.device).unsqueeze(1).expand(Q, k).reshape(-1)
        img, cap = (query, idx.reshape(-1)) if direction == "i2t" else (idx.reshape(-1), query)
        imgs.append(img)
        caps.append(cap)
    return torch.cat(imgs), torch.cat(caps)


def _teacher_slates(student, pair_scorer, N, M, batch_size, dedupe, progress):
    """Teacher scores shaped like each direction's slate: ({d: float [Q_d, k_test]}, number of pairs scored)."""
    img, cap = _slate_pairs(student)  # [P_all]
    if dedupe:
        keys, inverse = torch.unique(img * M + cap, return_inverse=True)
        img, cap = keys // M, keys % M
    scores = score_pairs(pair_scorer, img, cap, batch_size=batch_size, progress=progress)
    if dedupe:
        scores = scores[inverse]
    shapes = [student[d][1].shape for d in DIRECTIONS]
    split = scores.split([s.numel() for s in shapes])
    return {d: part.reshape(s) for d, part, s in zip(DIRECTIONS, split, shapes, strict=True)}, int(img.numel())


def score_pairs(
    pair_scorer: PairScorer,
    img_idx: torch.Tensor,
    cap_idx: torch.Tensor,
    *,
    batch_size: int = 1024,
    progress: bool = False,
) -> torch.Tensor:
    """Call ``pair_scorer`` over (image, caption) pairs in batches without grad: long [P], long [P] -> float [P].

    Raises ``ValueError`` if the scorer returns anything other than P finite floats per batch.
    """
    from tqdm.auto import tqdm

    check_tensor("img_idx", img_idx, ndim=1, dtype="int")
    check_tensor("cap_idx", cap_idx, shape=(img_idx.shape[0],), dtype="int")
    check_int("batch_size", batch_size, min_value=1)
    out = []
    starts = range(0, img_idx.shape[0], batch_size)
    with torch.no_grad():
        for p0 in tqdm(starts, desc="teacher re-ranking", unit="batch", disable=not progress):
            i, c = img_idx[p0 : p0 + batch_size], cap_idx[p0 : p0 + batch_size]
            s = pair_scorer(i, c)
            check_tensor("pair_scorer(img_idx, cap_idx)", s, shape=(i.shape[0],), dtype="float", finite=True)
            out.append(s.detach().float().to(img_idx.device))
    return torch.cat(out) if out else torch.empty(0, device=img_idx.device)


def pair_similarity(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    img_idx: torch.Tensor,
    cap_idx: torch.Tensor,
    *,
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Student scores of given pairs: ``scale * <image_emb[img_idx], text_emb[cap_idx]>``, float [P].

    Use it for :func:`graded_spearman` on held-out pairs, or as a ``pair_scorer`` stand-in.
    """
    check_tensor("image_emb", image_emb, ndim=2, dtype="float")
    check_tensor("text_emb", text_emb, shape=(None, image_emb.shape[1]), dtype="float")
    check_tensor("img_idx", img_idx, ndim=1, dtype="int")
    check_tensor("cap_idx", cap_idx, shape=(img_idx.shape[0],), dtype="int")
    return _check_scale(scale) * (image_emb[img_idx] * text_emb[cap_idx]).sum(dim=1)


# ---------------------------------------------------------------------------------------------- graded ranking


def graded_spearman(scores: torch.Tensor, relevance: torch.Tensor) -> float:
    """Spearman's rho between model scores and graded relevance over P pairs (ties get average ranks).

    The analogue of the paper's CxC ranking task: on held-out (image, caption) pairs with graded ground truth
    (e.g. how many of the caption's facts hold in the image), does the model order pairs like the truth?

    Args:
        scores: float [P] model scores; relevance: [P] graded relevance (any real or integer dtype). P >= 2.

    Returns:
        rho in [-1, 1] (``scipy.stats.spearmanr``: Pearson correlation of average ranks); ``nan`` if either input
        is constant (rho is undefined).
    """
    check_tensor("scores", scores, ndim=1, dtype="float", finite=True)
    check_tensor("relevance", relevance, shape=(scores.shape[0],), finite=True)
    if relevance.dtype == torch.bool or relevance.is_complex():
        raise ValueError(f"relevance must have a real or integer dtype, got {relevance.dtype}")
    if scores.shape[0] < 2:
        raise ValueError(f"scores and relevance need at least 2 pairs, got {scores.shape[0]}")
    a, b = scores.double().cpu().numpy(), relevance.double().cpu().numpy()
    if a.min() == a.max() or b.min() == b.max():
        return float("nan")  # rho is undefined for a constant input (scipy would warn and return nan)
    return float(spearmanr(a, b).statistic)


# ---------------------------------------------------------------------------------------------- table


def format_table(metrics_by_model: Mapping[str, Mapping[str, Any]], *, decimals: int = 1):
    """A table of metrics: rows = models, columns = (protocol, metric); non-dict entries (e.g. ``teacher_pairs``)
    become a column of their own.

    Args:
        metrics_by_model: model name -> the dict returned by :func:`retrieval_metrics` / :func:`rerank_metrics`.
        decimals: rounding of the values.

    Returns:
        ``pandas.DataFrame`` with a two-level column index.
    """
    import pandas as pd

    check_int("decimals", decimals, min_value=0)
    if not isinstance(metrics_by_model, Mapping) or not metrics_by_model:
        raise ValueError(f"metrics_by_model must be a non-empty mapping of model name -> metrics, got "
                         f"{type(metrics_by_model).__name__} {metrics_by_model!r:.80}")
    rows = {}
    for model, metrics in metrics_by_model.items():
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics_by_model[{model!r}] must be a dict of metrics, got {type(metrics).__name__}")
        row = {}
        for key, value in metrics.items():
            if isinstance(value, Mapping):
                row.update({(key, metric): v for metric, v in value.items()})
            else:
                row[(key, "")] = value
        rows[model] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["protocol", "metric"])
    return table.round(decimals)


# ---------------------------------------------------------------------------------------------- checks


def _check_ks(ks: Iterable[int], max_k: int, max_what: str) -> tuple[int, ...]:
    """Sorted distinct cut-offs, each an int in ``[1, max_k]``."""
    if isinstance(ks, int) or not isinstance(ks, Iterable):
        raise TypeError(f"ks must be a sequence of ints such as (1, 5, 10), got {type(ks).__name__} {ks!r}")
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must hold at least one cut-off, got an empty sequence")
    for k in ks:
        check_int(f"each of ks {ks}", k, min_value=1)
        if k > max_k:
            raise ValueError(f"each of ks must be <= {max_what}, got ks = {ks}")
    return tuple(sorted(set(ks)))


def _check_embeddings(
    image_emb: torch.Tensor, text_emb: torch.Tensor, relations: Mapping[str, PairRelation]
) -> tuple[int, int]:
    check_tensor("image_emb", image_emb, ndim=2, dtype="float", finite=True)
    check_tensor("text_emb", text_emb, shape=(None, image_emb.shape[1]), dtype="float", finite=True)
    if text_emb.dtype != image_emb.dtype or text_emb.device != image_emb.device:
        raise ValueError(
            f"image_emb and text_emb must share dtype and device, got {image_emb.dtype} on {image_emb.device} "
            f"and {text_emb.dtype} on {text_emb.device}"
        )
    N, M = image_emb.shape[0], text_emb.shape[0]
    if N == 0 or M == 0:
        raise ValueError(f"image_emb and text_emb must be non-empty, got N = {N} images and M = {M} captions")
    _check_relations(relations, N, M)
    return N, M


def _check_relations(relations: Mapping[str, PairRelation], N: int, M: int) -> None:
    if not isinstance(relations, Mapping) or not relations:
        raise ValueError(
            "relations must be a non-empty dict of protocol name -> PairRelation, e.g. "
            f"{{'coco': ImageIdRelation(...)}}, got {type(relations).__name__} {relations!r:.80}"
        )
    for name, relation in relations.items():
        if not isinstance(relation, PairRelation):
            raise TypeError(f"relations[{name!r}] must be a PairRelation, got {type(relation).__name__}")
        if (relation.num_images, relation.num_captions) != (N, M):
            raise ValueError(
                f"relations[{name!r}] must relate N = {N} images x M = {M} captions (the embeddings), "
                f"got {relation.num_images} x {relation.num_captions}"
            )


def _check_scale(scale: float | torch.Tensor) -> float:
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"scale must be a number or a 1-element tensor, got shape {tuple(scale.shape)}")
        scale = scale.detach().item()
    return check_float("scale", scale, min_value=0.0, strict_min=True)
