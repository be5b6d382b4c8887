import math

import pytest
import torch
from torch import nn

from vlp.batch import Batch
from vlp.models.layers.heads import ClassifierHead
from vlp.objectives import VQAObjective


class FixedLogits(nn.Module):
    """A head that returns given logits, so the loss can be checked by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.input_dim = 4

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.logits


class Pooled:
    def __init__(self, rows: int) -> None:
        self.pooled = torch.zeros(rows, 4)


def bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_loss_is_bce_summed_over_answers_and_the_score_is_vqa_accuracy() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 1.5, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1 / 3], [0.0, 2 / 3, 0.0]])
    objective = VQAObjective(FixedLogits(logits))  # type: ignore[arg-type]
    result = objective(Pooled(2), Batch(keys=["a", "b"], answers=targets))
    by_hand = sum(
        bce(x, t) for row_x, row_t in zip(logits.tolist(), targets.tolist()) for x, t in zip(row_x, row_t)
    )
    # BCE averaged over the 2 x 3 entries, times 3 answers = the per-question sum, averaged over questions
    assert result.loss.item() == pytest.approx(by_hand / 2, rel=1e-6)
    # question 0 picks answer 0 (score 1), question 1 picks answer 1 (2/3)
    assert result.logs["vqa_score"].item() == pytest.approx((1 + 2 / 3) / 2)


def test_a_head_of_the_wrong_size_is_named() -> None:
    objective = VQAObjective(ClassifierHead(4, num_classes=5))
    with pytest.raises(ValueError, match="num_classes to 3"):
        objective(Pooled(2), Batch(keys=["a", "b"], answers=torch.zeros(2, 3)))
    with pytest.raises(ValueError, match=r"batch\.answers"):
        objective(Pooled(2), Batch(keys=["a", "b"]))
