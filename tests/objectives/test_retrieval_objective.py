import pytest
import torch
import torch.nn.functional as F

from vlp.batch import Batch
from vlp.models.layers.heads import RankHead
from vlp.objectives import RetrievalObjective


class Pooled:
    def __init__(self, pooled: torch.Tensor) -> None:
        self.pooled = pooled


def test_cross_entropy_puts_each_images_own_caption_first() -> None:
    head = RankHead(4)
    objective = RetrievalObjective(head)
    pooled = torch.randn(2 * 3, 4)  # 2 images x (own caption + 2 negatives), image-major
    result = objective(Pooled(pooled), Batch(keys=["a", "b"]))
    scores = head(pooled).view(2, 3)
    assert result.loss.item() == pytest.approx(
        F.cross_entropy(scores, torch.zeros(2, dtype=torch.long)).item()
    )
    assert result.logs["rank_acc"].item() == pytest.approx((scores.argmax(1) == 0).float().mean().item())
    with pytest.raises(ValueError, match="whole number"):
        objective(Pooled(torch.randn(5, 4)), Batch(keys=["a", "b"]))
