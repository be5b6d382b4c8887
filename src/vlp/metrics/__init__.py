"""Evaluation metrics: VQA score, the official VQA accuracy, retrieval recall@K.

``OfficialVQAAccuracy`` and ``vqa_accuracy`` are imported on first use (they need torchmetrics, which
the objectives importing ``vlp.metrics`` do not).
"""

from typing import Any

from vlp.metrics.retrieval import chunked_scores, retrieval_recall, score_pair_range
from vlp.metrics.vqa import vqa_score

__all__ = [
    "OfficialVQAAccuracy",
    "chunked_scores",
    "retrieval_recall",
    "score_pair_range",
    "vqa_accuracy",
    "vqa_score",
]

_OFFICIAL_VQA = ("OfficialVQAAccuracy", "vqa_accuracy")


def __getattr__(name: str) -> Any:
    if name in _OFFICIAL_VQA:
        from vlp.metrics import vqa_official

        return getattr(vqa_official, name)
    raise AttributeError(f"module 'vlp.metrics' has no attribute {name!r}")
