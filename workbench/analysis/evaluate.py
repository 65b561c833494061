"""One call to evaluate a student (and optionally the teacher re-ranking it) on a split of the built-in world.

Reports, side by side: retrieval R@1/5/10 both directions and RSUM in the semantic and COCO protocols, the
teacher re-ranking of the student's top-``k_test``, minimal-pair accuracy per perturbation kind, and the graded
ranking score (Spearman between model scores and the world's relevance on a fixed stratified set of pairs).
"""

from __future__ import annotations

import torch

from workbench.analysis.minimal_pairs import minimal_pair_accuracy
from workbench.analysis.retrieval import graded_spearman, rerank_metrics, retrieval_metrics
from workbench.data.world import MinimalPairs, Split
from workbench.models.student import DualEncoder
from workbench.models.teacher import CrossEncoder, PairScorer


@torch.no_grad()
def embed_split(student: DualEncoder, split: Split, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(image embeddings float [N, E], caption embeddings float [M, E]) of a whole split."""
    student.eval()
    img = torch.cat([student.encode_image(x) for x in split.images.split(batch)])
    txt = torch.cat([student.encode_text(t) for t in split.tokens.split(batch)])
    return img, txt


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
        return (img_emb[img] * student.encode_text(tokens)).sum(-1)

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
    progress: bool = False,
) -> dict:
    """All metrics of one student on ``split`` (re-ranking only when a teacher is given)."""
    img_emb, txt_emb = embed_split(student, split)
    relations = split.relations()
    out: dict = {"retrieval": retrieval_metrics(img_emb, txt_emb, relations)}
    if minimal is not None:
        out["minimal_pairs"] = minimal_pair_accuracy(student_scorer(student, split), minimal)
    if graded is not None:
        scores = (img_emb[graded[0]] * txt_emb[graded[1]]).sum(-1)
        out["graded_spearman"] = graded_spearman(scores, split.relevance_pairs(*graded))
    if teacher is not None:
        scorer = PairScorer(teacher, split.images, split.tokens)
        out["rerank"] = rerank_metrics(img_emb, txt_emb, relations, scorer, k_test=k_test, progress=progress)
    return out


@torch.no_grad()
def evaluate_teacher(
    teacher: CrossEncoder, split: Split, minimal: MinimalPairs, graded: tuple[torch.Tensor, torch.Tensor] | None = None
) -> dict:
    """The teacher's own minimal-pair accuracy and graded Spearman (its ITM logits vs relevance)."""
    out = {"minimal_pairs": minimal_pair_accuracy(teacher_token_scorer(teacher, split), minimal)}
    if graded is not None:
        scorer = PairScorer(teacher, split.images, split.tokens)
        out["graded_spearman"] = graded_spearman(scorer(*graded), split.relevance_pairs(*graded))
    return out
