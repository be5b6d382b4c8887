"""COCO-style mAP of DETR-style predictions on hand cases with known values."""

from __future__ import annotations

import pytest
import torch

from vlp.batch import Targets
from vlp.metrics.detection import (
    detections,
    ground_truth,
    image_sizes,
    map_figures,
    mean_average_precision,
    to_pixels,
)

SIZES = torch.tensor([[64, 64]])
TARGETS = [
    Targets(
        torch.tensor([[0.5, 0.5, 0.25, 0.25], [0.2, 0.3, 0.1, 0.1]]), torch.tensor([1, 0]), torch.zeros(2, 0)
    )
]


def logits_for(labels: list[int], num_classes: int = 3) -> torch.Tensor:
    """One query per label (-1 = no object), confidently."""
    logits = torch.full((1, len(labels), num_classes + 1), -10.0)
    for q, label in enumerate(labels):
        logits[0, q, label] = 10.0
    return logits


def figures(logits: torch.Tensor, boxes: torch.Tensor) -> dict[str, float]:
    metric = mean_average_precision()
    metric.update(detections(logits, boxes, SIZES), ground_truth(TARGETS, SIZES))
    return {k: float(v) for k, v in map_figures(metric.compute()).items()}


def test_boxes_become_pixel_xyxy_of_the_real_image() -> None:
    mask = torch.zeros(1, 40, 64, dtype=torch.bool)
    mask[0, :32, :48] = True  # a 48 x 32 image padded to 64 x 40
    sizes = image_sizes(mask)
    assert sizes.tolist() == [[32, 48]]
    box = to_pixels(torch.tensor([[[0.5, 0.5, 0.5, 0.25]]]), sizes)
    assert box.tolist() == [[[12.0, 12.0, 36.0, 20.0]]]


def test_perfect_predictions_score_one_and_an_extra_no_object_query_costs_nothing() -> None:
    boxes = torch.cat([TARGETS[0].boxes, torch.tensor([[0.8, 0.8, 0.1, 0.1]])])[None]
    result = figures(logits_for([1, 0, 3]), boxes)  # the third query says "no object"
    assert result["map"] == pytest.approx(1.0) and result["map_50"] == pytest.approx(1.0)
    assert result["map_small"] == pytest.approx(1.0)  # 16 x 16 and 6.4 x 6.4 pixels: both "small"
    assert result["map_medium"] == -1.0 and result["map_large"] == -1.0  # no such objects


def test_a_box_at_iou_0_6_counts_for_ap50_not_ap75() -> None:
    # the first box widened from 0.25 to 0.25 / 0.6 of the image: IoU = 0.6 with its target
    boxes = TARGETS[0].boxes.clone()
    boxes[0, 2] = 0.25 / 0.6
    result = figures(logits_for([1, 0]), boxes[None])
    assert result["map_50"] == pytest.approx(1.0)
    assert result["map_75"] == pytest.approx(0.5)  # one class of two still exact
    assert 0.5 < result["map"] < 1.0


def test_wrong_classes_score_zero() -> None:
    result = figures(logits_for([2, 2]), TARGETS[0].boxes[None])
    assert result["map_50"] == 0.0 and result["map"] == 0.0


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"expected logits \[B, Q, C\+1\]"):
        detections(torch.zeros(1, 2, 4), torch.zeros(1, 3, 4), SIZES)


def test_sigmoid_scores_read_each_class_alone_and_not_the_no_object_column() -> None:
    logits = torch.tensor([[[2.0, -1.0, 0.0, 9.0], [-3.0, -2.0, 1.0, -9.0]]])  # no-object column last
    boxes = torch.rand(1, 2, 4) * 0.5 + 0.25
    found = detections(logits, boxes, SIZES, scores="sigmoid")[0]
    assert found["labels"].tolist() == [0, 2]
    torch.testing.assert_close(found["scores"], torch.tensor([2.0, 1.0]).sigmoid())
    # the softmax would have let the no-object column shrink the first query's score to almost nothing
    assert detections(logits, boxes, SIZES)[0]["scores"][0] < 1e-3
    with pytest.raises(ValueError, match="scores"):
        detections(logits, boxes, SIZES, scores="relu")
