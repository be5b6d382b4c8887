import pytest
import torch
import torch.nn.functional as F

from vlp.batch import Batch
from vlp.models.layers.heads import ClassifierHead
from vlp.objectives import NLVR2Objective


class Pooled:
    def __init__(self, pooled: torch.Tensor) -> None:
        self.pooled = pooled


def test_the_head_reads_left_then_right_pooled_states() -> None:
    head = ClassifierHead(8, num_classes=2)
    objective = NLVR2Objective(head)
    assert objective.input_dim == 4  # the model width it reads
    left, right = torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.tensor([1, 0, 1])
    result = objective((Pooled(left), Pooled(right)), Batch(keys=list("abc"), pair_labels=labels))
    logits = head(torch.cat([left, right], dim=-1))
    assert result.loss.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    assert result.logs["nlvr2_acc"].item() == pytest.approx(
        (logits.argmax(-1) == labels).float().mean().item()
    )
    swapped = objective((Pooled(right), Pooled(left)), Batch(keys=list("abc"), pair_labels=labels))
    assert swapped.loss.item() != pytest.approx(result.loss.item())


def test_heads_that_cannot_read_a_pair_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        NLVR2Objective(ClassifierHead(7, num_classes=2))
    with pytest.raises(ValueError, match="2 classes"):
        NLVR2Objective(ClassifierHead(8, num_classes=3))
