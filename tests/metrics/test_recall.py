import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate

from vlp.metrics.retrieval import chunked_scores, retrieval_recall, score_pair_range


def test_recall_on_a_hand_made_score_matrix() -> None:
    # 4 texts x 3 images; texts 0, 1 describe image 0, text 2 image 1, text 3 image 2
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # text 0: image 0 first           -> hit from K = 1
            [0.2, 0.8, 0.1],  # text 1: image 0 second           -> hit from K = 2
            [0.1, 0.3, 0.7],  # text 2: image 1 second           -> hit from K = 2
            [0.0, 0.5, 0.4],  # text 3: image 2 second           -> hit from K = 2
        ]
    )
    owners = torch.tensor([0, 0, 1, 2])
    recall = retrieval_recall(scores, owners, ks=(1, 2, 5))
    assert recall["t2i_r1"].item() == pytest.approx(1 / 4)
    assert recall["t2i_r2"].item() == pytest.approx(1.0)
    # image -> text, by column: image 0's best text is text 0 (its own) -> hit at 1;
    # image 1: text 1 (0.8) then text 3 (0.5), its own text 2 (0.3) is third -> hit only at K >= 3;
    # image 2: text 2 (0.7) then text 3 (0.4, its own) -> hit at 2
    assert recall["i2t_r1"].item() == pytest.approx(1 / 3)
    assert recall["i2t_r2"].item() == pytest.approx(2 / 3)
    assert recall["i2t_r5"].item() == pytest.approx(1.0)  # K beyond the 4 candidates counts all of them


def test_recall_matches_torchmetrics_hit_rate_on_random_scores() -> None:
    generator = torch.Generator().manual_seed(3)
    texts, images = 40, 12
    scores = torch.randn(texts, images, generator=generator)
    owners = torch.randint(0, images, (texts,), generator=generator)
    owners[:images] = torch.arange(images)  # every image has a text
    relevant = owners[:, None] == torch.arange(images)[None]
    ours = retrieval_recall(scores, owners, ks=(1, 5))
    for k in (1, 5):
        t2i = RetrievalHitRate(top_k=k)(
            scores.flatten(), relevant.flatten(), indexes=torch.arange(texts).repeat_interleave(images)
        )
        i2t = RetrievalHitRate(top_k=k)(
            scores.t().flatten(),
            relevant.t().flatten(),
            indexes=torch.arange(images).repeat_interleave(texts),
        )
        torch.testing.assert_close(ours[f"t2i_r{k}"], t2i)
        torch.testing.assert_close(ours[f"i2t_r{k}"], i2t)


def test_chunked_scores_equal_unchunked_and_bound_each_call() -> None:
    table = torch.randn(7, 5)
    sizes = []

    def score(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        sizes.append(len(text))
        return table[text, image]

    for chunk in (1, 3, 8, 35, 100):
        sizes.clear()
        torch.testing.assert_close(chunked_scores(score, 7, 5, chunk), table)
        assert max(sizes) <= chunk and sum(sizes) == 35


def test_a_pair_range_pads_to_the_requested_number_of_calls() -> None:
    table = torch.arange(12.0).reshape(4, 3)
    calls = []

    def score(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        calls.append((text.tolist(), image.tolist()))
        return table[text, image]

    torch.testing.assert_close(score_pair_range(score, 3, 5, 9, 3, calls=4), torch.tensor([5.0, 6, 7, 8]))
    assert calls[:2] == [([1, 2, 2], [2, 0, 1]), ([2], [2])]
    assert len(calls) == 4  # two extra calls, on pair 0, discarded
    calls.clear()
    assert score_pair_range(score, 3, 12, 12, 3, calls=2).numel() == 0 and len(calls) == 2
    with pytest.raises(ValueError, match="calls"):
        score_pair_range(score, 3, 0, 12, 3, calls=2)
