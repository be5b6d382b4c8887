import pytest
import torch

from vlp.metrics.vqa import vqa_score


def test_vqa_score_is_the_soft_score_of_the_top_answer() -> None:
    targets = torch.tensor([[1.0, 1 / 3, 0.0], [0.0, 2 / 3, 1 / 3], [0.0, 0.0, 0.0]])
    logits = torch.tensor([[0.1, 2.0, -1.0], [0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    # question 0 picks answer 1 (1/3 of the credit), question 1 picks answer 1 (2/3), question 2 has
    # no answer in the vocabulary and scores 0 whatever it picks
    torch.testing.assert_close(vqa_score(logits, targets), torch.tensor([1 / 3, 2 / 3, 0.0]))


def test_vqa_score_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        vqa_score(torch.zeros(2, 3), torch.zeros(2, 4))
