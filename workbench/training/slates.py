"""Building the ScoreBatches a training step's losses consume: in-batch ITC slates and mined distillation slates.

Distillation slate of a query (one per direction): its own positive, then K negatives from the mining pool,
``[pos, n_1 .. n_K]``; student scores carry gradients (through the query; through the candidate too when it is
in the batch), teacher scores come from the store. Pools:

- ``batch``: the batch's other candidates (the paper's in-batch setting);
- ``queue``: the batch plus a FIFO of recent candidate embeddings (detached);
- ``gallery``: the whole training split, re-embedded every ``refresh_every`` steps (detached).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.data.relations import PairRelation
from workbench.losses import ScoreBatch
from workbench.scores.mining import Mined, mine_hard_negatives, relation_exclude, sample_easy_negatives
from workbench.training.config import FitConfig


@dataclass
class Side:
    """One direction's view of a batch: queries and the candidate pool.

    Attributes:
        query: float [B, E] query embeddings (grad); query_ids: long [B] split indices.
        own: float [B, E] each query's own positive (grad), the paired caption / image.
        pool: float [C, E] candidate embeddings (grad for the batch part); pool_ids: long [C] split indices.
        direction: "i2t" or "t2i".
    """

    query: torch.Tensor
    query_ids: torch.Tensor
    own: torch.Tensor
    own_ids: torch.Tensor
    pool: torch.Tensor
    pool_ids: torch.Tensor
    direction: str

    def pair_ids(self, cand_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image idx, caption idx) of every (query, candidate) pair: cand_ids long [B, L] -> two long [B, L]."""
        q = self.query_ids[:, None].expand_as(cand_ids)
        return (q, cand_ids) if self.direction == "i2t" else (cand_ids, q)


def itc_batch(sim: torch.Tensor, positive: torch.Tensor) -> ScoreBatch:
    """In-batch ITC slates: every query's slate is every candidate of the batch. sim float [B, C], positive bool."""
    return ScoreBatch(student=sim, positive=positive)


def mine(side: Side, cfg: FitConfig, relation: PairRelation, scale: torch.Tensor, gen: torch.Generator) -> Mined:
    """Negatives per query from the pool, positives (per ``relation``) excluded: K hard, K easy, or both (2K)."""
    exclude = relation_exclude(relation, side.direction, query_ids=side.query_ids, candidate_ids=side.pool_ids)
    query, pool = side.query.detach().float(), side.pool.detach().float()
    easy = hard = None
    if cfg.negatives in ("easy", "hard+easy"):
        easy = sample_easy_negatives(query, pool, cfg.k, beyond_rank=cfg.easy_rank, positives=exclude,
                                     generator=gen, scale=scale.detach())
    if cfg.negatives in ("hard", "hard+easy"):
        hard = mine_hard_negatives(query, pool, cfg.k, positives=exclude, scale=scale.detach())
    if easy is None or hard is None:
        return easy or hard
    return Mined(torch.cat([hard.indices, easy.indices], 1), torch.cat([hard.scores, easy.scores], 1),
                 torch.cat([hard.valid, easy.valid], 1))


def distill_batch(side: Side, cfg: FitConfig, relation: PairRelation, scale: torch.Tensor, teacher,
                  gen: torch.Generator) -> ScoreBatch:
    """The distillation ScoreBatch of one direction: ``[own positive, K mined]`` (or the whole batch for "all")."""
    s, positive, valid, ids = _slate(side, cfg, relation, scale, gen)
    batch = ScoreBatch(student=s, positive=positive, mask=valid)
    if teacher is None:
        return batch
    logits, probs = teacher(*teacher_pairs(side, ids))
    return with_teacher(batch, logits.reshape(ids.shape), probs.reshape(ids.shape), cfg)


def distill_slate(side: Side, cfg: FitConfig, relation: PairRelation, scale: torch.Tensor,
                  gen: torch.Generator) -> tuple[ScoreBatch, torch.Tensor]:
    """One direction's slates before the teacher: (ScoreBatch without teacher scores, candidate split indices long
    [B, L]). :func:`teacher_pairs` gives the (image, caption) pairs the teacher should score for them (the batched
    trainer asks the teacher once for every member's pairs)."""
    s, positive, valid, ids = _slate(side, cfg, relation, scale, gen)
    return ScoreBatch(student=s, positive=positive, mask=valid), ids


def _slate(side: Side, cfg: FitConfig, relation: PairRelation, scale: torch.Tensor, gen: torch.Generator):
    """(student scores float [B, L], positive, valid, candidate split indices long [B, L])."""
    if cfg.negatives == "all":
        cand = torch.arange(len(side.pool_ids), device=side.query.device).expand(len(side.query), -1)
        valid = torch.ones_like(cand, dtype=torch.bool)
        s = scale * side.query @ side.pool.T
        ids = side.pool_ids[cand]
        positive = _truth(side, relation, ids)
    else:
        mined = mine(side, cfg, relation, scale, gen)
        rows = mined.indices.clamp(min=0)
        s_neg = scale * (side.query[:, None, :] * side.pool[rows]).sum(-1)  # [B, K]
        s_pos = scale * (side.query * side.own).sum(-1, keepdim=True)  # [B, 1]
        s = torch.cat([s_pos, s_neg.masked_fill(~mined.valid, 0.0)], 1)
        ids = torch.cat([side.own_ids[:, None], side.pool_ids[rows]], 1)
        valid = torch.cat([torch.ones_like(mined.valid[:, :1]), mined.valid], 1)
        positive = torch.zeros_like(valid)
        positive[:, 0] = True
    return s.float(), positive, valid, ids


def with_teacher(batch: ScoreBatch, logits: torch.Tensor, probs: torch.Tensor, cfg: FitConfig) -> ScoreBatch:
    """``batch`` with the teacher's scores of its pairs (``logits``, ``probs`` float [B, L]) as the losses should see
    them (:func:`teacher_output`); under ``cfg.drop_teacher_matches`` its teacher-detected false negatives
    (:func:`teacher_matches`) leave the slate (mask False: neither ordered nor in any denominator)."""
    u = teacher_output(logits, probs, cfg).float()
    mask = batch.mask
    if cfg.drop_teacher_matches:
        mask = mask & ~teacher_matches(probs, batch.positive, cfg.match_threshold)
    return ScoreBatch(student=batch.student, positive=batch.positive, teacher=u, mask=mask)


def teacher_matches(probs: torch.Tensor, positive: torch.Tensor, threshold: float) -> torch.Tensor:
    """bool [B, L]: the slate's negatives the teacher scores as matches (probability ``>= threshold``), its
    detected false negatives. ``probs`` float [B, L] teacher probabilities; ``positive`` bool [B, L]."""
    return ~positive & (probs >= threshold)


def _truth(side: Side, relation: PairRelation, cand_ids: torch.Tensor) -> torch.Tensor:
    img, cap = side.pair_ids(cand_ids)
    return relation.pairs(img.flatten(), cap.flatten()).reshape(cand_ids.shape)


def teacher_pairs(side: Side, cand_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image idx long [B*L], caption idx long [B*L]): the pairs of a slate, flattened row by row."""
    img, cap = side.pair_ids(cand_ids)
    return img.flatten(), cap.flatten()


def teacher_output(logits: torch.Tensor, probs: torch.Tensor, cfg: FitConfig) -> torch.Tensor:
    """What the losses see as ``u`` (``cfg.teacher_output``) from the teacher's logits and probabilities."""
    return {"logit": logits, "probability": probs, "tempered": logits / cfg.teacher_temperature}[cfg.teacher_output]
