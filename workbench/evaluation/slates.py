"""Evaluation slates on the test split: per query, its positives, the student's hard negatives and easy negatives,
with the student's scores, the teacher's logits and the world's graded relevance for every entry.

Shared by the Finding 1 (score distributions) and Finding 2 (agreement) analyses and the validity-rule analysis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.data.world import Split
from workbench.evaluation.embed import embed_split
from workbench.models.student import DualEncoder
from workbench.models.teacher import CrossEncoder, PairScorer
from workbench.scores.mining import mine_hard_negatives, relation_exclude, sample_easy_negatives


@dataclass
class EvalSlates:
    """One direction's slates, all [Q, L] with L = P + K_hard + K_easy columns (positives first).

    Attributes:
        student: float, scale * cosine; teacher: float, ITM logits; relevance: float in [0, 1].
        positive, hard, easy: bool masks of the three groups (padding = none of them).
        direction: "i2t" or "t2i".
        queries: long [Q], the split index of each query (an image for i2t, a caption for t2i); ``None`` if unknown.
        candidates: long [Q, L], the split index of each entry (a caption for i2t, an image for t2i; padding
            entries hold 0); ``None`` if unknown.
    """

    student: torch.Tensor
    teacher: torch.Tensor
    relevance: torch.Tensor
    positive: torch.Tensor
    hard: torch.Tensor
    easy: torch.Tensor
    direction: str
    queries: torch.Tensor | None = None
    candidates: torch.Tensor | None = None

    @property
    def valid(self) -> torch.Tensor:
        return self.positive | self.hard | self.easy


def build_eval_slates(student: DualEncoder, teacher: CrossEncoder, split: Split, direction: str, *,
                      queries: int = 1000, positives: int = 5, k_hard: int = 16, k_easy: int = 16,
                      easy_rank: int = 100, seed: int = 0) -> EvalSlates:
    """Slates for up to ``queries`` queries of ``direction`` (a fixed random subset when there are more)."""
    gen = torch.Generator().manual_seed(seed)
    img_emb, txt_emb = (e.float().cpu() for e in embed_split(student, split))
    q_emb, c_emb = (img_emb, txt_emb) if direction == "i2t" else (txt_emb, img_emb)
    q_idx = torch.randperm(len(q_emb), generator=gen)[:queries].sort().values
    relation = split.relations()["semantic"]
    exclude = relation_exclude(relation, direction, query_ids=q_idx)
    scale = student.logit_scale.detach().cpu()
    hard = mine_hard_negatives(q_emb[q_idx], c_emb, k_hard, positives=exclude, scale=scale)
    easy = sample_easy_negatives(q_emb[q_idx], c_emb, k_easy, beyond_rank=easy_rank, positives=exclude,
                                 generator=gen, scale=scale)
    pos_idx, pos_valid = _positives(relation, direction, q_idx, len(c_emb), positives, gen)
    cand = torch.cat([pos_idx, hard.indices, easy.indices], 1).clamp(min=0)
    groups = [torch.zeros_like(cand, dtype=torch.bool) for _ in range(3)]
    widths = [pos_idx.shape[1], k_hard, k_easy]
    for g, (start, mask) in enumerate(zip([0, widths[0], widths[0] + k_hard], [pos_valid, hard.valid, easy.valid],
                                          strict=True)):
        groups[g][:, start : start + widths[g]] = mask
    q = q_idx[:, None].expand_as(cand)
    img, cap = (q, cand) if direction == "i2t" else (cand, q)
    s = scale * (q_emb[q_idx][:, None, :] * c_emb[cand]).sum(-1)
    u = PairScorer(teacher, split.images, split.tokens)(img.flatten(), cap.flatten()).reshape(cand.shape)
    rel = split.relevance_pairs(img.flatten(), cap.flatten()).reshape(cand.shape)
    return EvalSlates(s.float(), u.float(), rel, *groups, direction, queries=q_idx, candidates=cand)


def _positives(relation, direction: str, q_idx: torch.Tensor, n_cand: int, p: int, gen: torch.Generator):
    """Up to ``p`` random positives per query: (long [Q, p], bool [Q, p])."""
    all_c = torch.arange(n_cand)
    truth = relation.block(q_idx, all_c) if direction == "i2t" else relation.block(all_c, q_idx).T  # [Q, C]
    keys = torch.rand(truth.shape, generator=gen).masked_fill(~truth, -1.0)
    top = keys.topk(min(p, n_cand), dim=1)
    return top.indices, top.values >= 0


@torch.no_grad()
def slate_scores(student: Any, split: Any, slates: EvalSlates) -> torch.Tensor:
    """float [Q, L]: a student's logits (``logit_scale * cosine``) on the slates' own (query, entry) pairs, so that
    several students are compared on the same pairs (padding entries hold the score of candidate 0).

    Args:
        student: a dual encoder (built-in or Hugging Face) that :func:`~workbench.evaluation.evaluate.embed_split`
            can embed ``split`` with.
        split: the split the slates were built on.
        slates: :class:`~workbench.evaluation.slates.EvalSlates` with ``queries`` and ``candidates``.
    """
    if slates.queries is None or slates.candidates is None:
        raise ValueError("slates must carry queries and candidates (build them with build_eval_slates)")
    img, txt = (e.float().cpu() for e in embed_split(student, split))
    q_emb, c_emb = (img, txt) if slates.direction == "i2t" else (txt, img)
    scale = student.logit_scale.detach().float().cpu()
    return (scale * (q_emb[slates.queries][:, None, :] * c_emb[slates.candidates]).sum(-1)).float()
