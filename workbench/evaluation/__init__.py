"""Evaluation: how good is a student (or the teacher re-ranking it)? Retrieval R@K in the COCO and semantic
protocols, teacher re-ranking of the top ``k_test``, minimal pairs, graded Spearman, the protocol card, whole-split
embedding, and the evaluation slates the findings analyse.

    from workbench.evaluation import evaluate_student, retrieval_metrics
"""

from workbench.evaluation.embed import embed_split, embed_split_rows
from workbench.evaluation.evaluate import evaluate_student, evaluate_teacher, graded_pairs
from workbench.evaluation.minimal_pairs import minimal_pair_accuracy
from workbench.evaluation.protocol import ProtocolCard, TeacherCost, protocol_card, training_cost
from workbench.evaluation.retrieval import graded_spearman, rerank_metrics, retrieval_metrics
from workbench.evaluation.slates import EvalSlates, build_eval_slates, slate_scores

__all__ = [
    "EvalSlates",
    "ProtocolCard",
    "TeacherCost",
    "build_eval_slates",
    "embed_split",
    "embed_split_rows",
    "evaluate_student",
    "evaluate_teacher",
    "graded_pairs",
    "graded_spearman",
    "minimal_pair_accuracy",
    "protocol_card",
    "rerank_metrics",
    "retrieval_metrics",
    "slate_scores",
    "training_cost",
]
