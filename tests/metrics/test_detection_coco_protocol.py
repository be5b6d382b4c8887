"""vlp's detection mAP is COCO's protocol: the same AP / AP50 / AP75 as pycocotools' COCOeval run directly on
the COCO-format ground truth and results, and hand-checkable values (perfect 1.0; one box at IoU 5/7, which
counts at the thresholds 0.50 .. 0.70 and not at 0.75 .. 0.95)."""

from __future__ import annotations

import contextlib
import io

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vlp.batch import Targets
from vlp.metrics.detection import detections, ground_truth, map_figures, mean_average_precision

SIZE = 64  # pixels; boxes are whole pixels, so every normalised coordinate is exact in float32
SIZES = torch.tensor([[SIZE, SIZE]])


def normalised(xyxy: list[list[int]]) -> torch.Tensor:
    """Pixel ``[x0, y0, x1, y1]`` boxes as the model's normalised ``[cx, cy, w, h]`` (exact: dyadic)."""
    boxes = torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    return torch.cat([centre, boxes[:, 2:] - boxes[:, :2]], dim=1) / SIZE


def confident(labels: list[int], scores: list[float], num_classes: int) -> torch.Tensor:
    """Logits ``[Q, C + 1]`` whose softmax gives each query ``labels[q]`` with probability ``scores[q]``
    (the rest spread over the other columns)."""
    logits = torch.full((len(labels), num_classes + 1), 0.0)
    for q, (label, score) in enumerate(zip(labels, scores)):
        rest = (1.0 - score) / num_classes
        logits[q] = torch.log(torch.full((num_classes + 1,), rest))
        logits[q, label] = torch.log(torch.tensor(score))
    return logits


def vlp_figures(images: list[dict], num_classes: int) -> dict[str, float]:
    metric = mean_average_precision()
    for image in images:
        logits = confident(image["pred_labels"], image["scores"], num_classes)[None]
        found = detections(logits, normalised(image["pred_boxes"])[None], SIZES)
        target = Targets(
            normalised(image["boxes"]), torch.tensor(image["labels"]), torch.zeros(len(image["labels"]), 0)
        )
        metric.update(found, ground_truth([target], SIZES))
    return {name: float(value) for name, value in map_figures(metric.compute()).items()}


def cocoeval_stats(images: list[dict], num_classes: int) -> list[float]:
    """pycocotools' COCOeval (bbox) on the same boxes as COCO's own files would hold them: ``[x, y, w, h]``
    pixels, the area of each box (no segmentation), every detection with its category and score."""

    def xywh(box: list[int]) -> list[float]:
        return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]

    annotations, results = [], []
    for image_id, image in enumerate(images):
        for box, label in zip(image["boxes"], image["labels"]):
            x, y, w, h = xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        scores = confident(image["pred_labels"], image["scores"], num_classes).softmax(-1)
        for q, (box, label) in enumerate(zip(image["pred_boxes"], image["pred_labels"])):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": xywh(box),
                    "score": float(scores[q, label]),
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": SIZE, "height": SIZE} for i in range(len(images))],
        "annotations": annotations,
        "categories": [{"id": c} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [float(value) for value in evaluation.stats]


def test_perfect_predictions_score_one_at_every_threshold() -> None:
    image = {"boxes": [[4, 4, 20, 36], [30, 10, 60, 40]], "labels": [0, 1]}
    image |= {"pred_boxes": image["boxes"], "pred_labels": [0, 1], "scores": [0.9, 0.8]}
    figures = vlp_figures([image], num_classes=2)
    assert (figures["map"], figures["map_50"], figures["map_75"]) == (1.0, 1.0, 1.0)


def test_one_box_at_iou_five_sevenths_scores_its_class_half_the_thresholds() -> None:
    # class 1's box is 20 x 20 pixels; the prediction extends it by 8 rows: IoU = 400 / 560 = 5/7 = 0.714,
    # a match at the IoU thresholds 0.50, 0.55, 0.60, 0.65, 0.70 and a miss at 0.75 ... 0.95, so class 1
    # has AP 1 at five thresholds of ten and AP 0 at the others (its only detection is then a false
    # positive at recall 0); class 0 is exact. AP = (1 + 5/10) / 2, AP50 = 1, AP75 = (1 + 0) / 2.
    image = {"boxes": [[4, 4, 20, 36], [30, 10, 50, 30]], "labels": [0, 1]}
    image |= {"pred_boxes": [[4, 4, 20, 36], [30, 10, 50, 38]], "pred_labels": [0, 1], "scores": [0.9, 0.8]}
    figures = vlp_figures([image], num_classes=2)
    assert (figures["map"], figures["map_50"], figures["map_75"]) == (0.75, 1.0, 0.5)


def test_ap_ap50_ap75_are_cocoevals_on_the_same_boxes() -> None:
    generator = torch.Generator().manual_seed(0)
    images = []
    for _ in range(4):
        corners = torch.randint(0, 40, (5, 2), generator=generator)
        sides = torch.randint(6, 24, (5, 2), generator=generator)
        boxes = torch.cat([corners, corners + sides], dim=1)
        labels = torch.randint(0, 3, (5,), generator=generator)
        shift = torch.randint(-2, 3, (5, 4), generator=generator)  # predictions near their objects
        predicted = (boxes + shift).clamp(0, SIZE)
        predicted_labels = torch.where(torch.rand(5, generator=generator) < 0.2, (labels + 1) % 3, labels)
        spurious = torch.tensor([[0, 0, 10, 10], [40, 40, 63, 63]])  # false positives
        images.append(
            {
                "boxes": boxes.tolist(),
                "labels": labels.tolist(),
                "pred_boxes": torch.cat([predicted, spurious]).tolist(),
                "pred_labels": [*predicted_labels.tolist(), 0, 2],
                "scores": [0.95 - 0.02 * (7 * len(images) + q) for q in range(7)],  # distinct, above 1/4
            }
        )
    figures = vlp_figures(images, num_classes=3)
    stats = cocoeval_stats(images, num_classes=3)
    assert 0.2 < stats[0] < 0.9 and stats[1] > stats[2]  # a case that tells the thresholds apart
    # pycocotools both times, on the same whole-pixel boxes and float32 scores: the same numbers, which
    # torchmetrics returns as float32
    expected = torch.tensor([stats[0], stats[1], stats[2], stats[3], stats[8]], dtype=torch.float32)
    assert [
        figures[name] for name in ("map", "map_50", "map_75", "map_small", "mar_100")
    ] == expected.tolist()
