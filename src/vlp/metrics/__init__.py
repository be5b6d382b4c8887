"""Evaluation metrics: VQA score, retrieval recall@K."""

from vlp.metrics.retrieval import chunked_scores, retrieval_recall, score_pair_range
from vlp.metrics.vqa import vqa_score

__all__ = ["chunked_scores", "retrieval_recall", "score_pair_range", "vqa_score"]
