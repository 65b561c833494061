"""One call to evaluate a student (and optionally the teacher re-ranking it) on a split.

Reports, side by side: retrieval R@1/5/10 both directions and RSUM in every protocol of the split (built-in world:
semantic and COCO; Karpathy splits: COCO), the teacher re-ranking of the student's top-``k_test``, and, on the
built-in world, minimal-pair accuracy per perturbation kind and the graded ranking score (Spearman between model
scores and the world's relevance on a fixed stratified set of pairs).

Both worlds go through the same code: students are read through ``encode_images`` / ``encode_texts``, teachers
through ``pair_scorer(split)``. Across processes (``accelerate launch``) each rank embeds a slice of the split and
scores a slice of every batch of re-ranking pairs; the slices are gathered, so every rank returns the same metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from workbench.data.perturbations import MinimalPairs
from workbench.data.world import Split
from workbench.distributed import Dist, current
from workbench.evaluation.embed import embed_split
from workbench.evaluation.minimal_pairs import minimal_pair_accuracy
from workbench.evaluation.retrieval import graded_spearman, rerank_metrics, retrieval_metrics
from workbench.models.student import DualEncoder
from workbench.models.teacher import CrossEncoder


def sharded_scorer(pair_scorer: Callable, dist: Dist) -> Callable:
    """``pair_scorer`` with each call's pairs split over the ranks and the scores gathered (identity in one
    process). Every rank must make the same calls in the same order (as :func:`rerank_metrics` does)."""
    if not dist.enabled:
        return pair_scorer

    @torch.no_grad()
    def score(img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        rows = dist.shard(len(img))
        local = pair_scorer(img[rows.start : rows.stop], cap[rows.start : rows.stop])
        return dist.gather_rows(local.float().reshape(-1)).to(img.device)

    return score


def graded_pairs(split: Split, per_level: int = 500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed set of held-out pairs stratified by relevance (up to ``per_level`` pairs per relevance value).

    Returns:
        (image indices long [P], caption indices long [P]).
    """
    gen = torch.Generator().manual_seed(seed)
    img = torch.randint(split.num_images, (per_level * 200,), generator=gen)
    cap = torch.randint(split.num_captions, (per_level * 200,), generator=gen)
    rel = split.relevance_pairs(img, cap)
    keep = torch.cat([torch.nonzero(rel == v).flatten()[:per_level] for v in torch.unique(rel)])
    return img[keep], cap[keep]


def student_scorer(student: DualEncoder, split: Split):
    """``scorer(img [P], tokens [P, T]) -> cosine [P]`` for minimal pairs (image embeddings cached)."""
    img_emb, _ = embed_split(student, split)

    @torch.no_grad()
    def scorer(img: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return (img_emb[img.to(img_emb.device)] * student.encode_text(tokens.to(img_emb.device))).sum(-1).cpu()

    return scorer


def teacher_token_scorer(teacher: CrossEncoder, split: Split):
    """``scorer(img [P], tokens [P, T]) -> ITM logits [P]`` (for minimal pairs, whose captions are not in the split)."""

    @torch.no_grad()
    def scorer(img: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        teacher.eval()
        dev = next(teacher.parameters()).device
        return teacher.score(split.images[img].to(dev), tokens.to(dev)).float().cpu()

    return scorer


@torch.no_grad()
def evaluate_student(
    student: DualEncoder, split: Split, *, teacher: CrossEncoder | None = None, k_test: int = 16,
    minimal: MinimalPairs | None = None, graded: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = False, fusion: str = "itm", pair_scorer: Callable | None = None, dist: Dist | None = None,
    ks: tuple[int, ...] = (1, 5, 10), embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """All metrics of one student on ``split`` (re-ranking only when a teacher or a pair scorer is given).

    Args:
        student: a built-in :class:`DualEncoder` or an :class:`~workbench.models.hf.HFStudent`.
        split: a built-in split or a :class:`~workbench.data.karpathy.KarpathySplit`.
        teacher: re-ranks the student's top ``k_test`` through ``teacher.pair_scorer(split)``.
        k_test: slate re-ranked per query.
        minimal, graded: built-in world only: minimal pairs and graded pairs.
        fusion: ``"itm"`` (teacher score alone) or ``"itm+itc"`` (teacher score + the student's cosine, as LAVIS).
        pair_scorer: ``(img [P], cap [P]) -> float [P]`` used instead of the teacher's own scorer (e.g. one backed
            by the score store).
        dist: data-parallel context (default: the initialised process group, if any).
        ks: recall cut-offs.
        embeddings: the student's ``(image [N, E], caption [M, E])`` embeddings of ``split`` if already computed.
    """
    dist = current() if dist is None else dist
    img_emb, txt_emb = embeddings or embed_split(student, split, dist=dist, progress=progress)
    img_emb, txt_emb = img_emb.float().cpu(), txt_emb.float().cpu()  # metrics run blocked on the CPU
    relations = split.relations()
    out: dict = {"retrieval": retrieval_metrics(img_emb, txt_emb, relations, ks=ks)}
    if minimal is not None:
        out["minimal_pairs"] = minimal_pair_accuracy(student_scorer(student, split), minimal)
    if graded is not None:
        scores = (img_emb[graded[0]] * txt_emb[graded[1]]).sum(-1)
        out["graded_spearman"] = graded_spearman(scores, split.relevance_pairs(*graded))
    if pair_scorer is None and teacher is not None:
        pair_scorer = teacher.pair_scorer(split)
    if pair_scorer is not None:
        out["rerank"] = rerank_metrics(img_emb, txt_emb, relations, sharded_scorer(pair_scorer, dist), k_test=k_test,
                                       ks=ks, fusion=fusion, progress=progress and dist.is_main)
    return out


@torch.no_grad()
def evaluate_teacher(
    teacher: CrossEncoder, split: Split, minimal: MinimalPairs, graded: tuple[torch.Tensor, torch.Tensor] | None = None
) -> dict:
    """The teacher's own minimal-pair accuracy and graded Spearman (its ITM logits vs relevance)."""
    out = {"minimal_pairs": minimal_pair_accuracy(teacher_token_scorer(teacher, split), minimal)}
    if graded is not None:
        scorer = teacher.pair_scorer(split)
        out["graded_spearman"] = graded_spearman(scorer(*graded), split.relevance_pairs(*graded))
    return out
