"""Detection mAP of set predictions by COCO's protocol, through torchmetrics' ``MeanAveragePrecision``.

The computation is pycocotools' ``COCOeval`` (bbox) itself (the metric's ``pycocotools`` backend): AP
averaged over the IoU thresholds 0.50:0.05:0.95 and 101 recall points, AP50, AP75, at most 100
detections per image; ``tests/metrics/test_detection_coco_protocol.py`` checks it against ``COCOeval`` run
directly on the same boxes in COCO's own format.

DETR-style predictions become COCO detections as in DETR's ``PostProcess``: each query's class is its
most probable real class (the no-object column is dropped before the arg-max, after the softmax over
all columns) with that probability as its score; every query is a detection (COCO keeps up to 100 per
image). Boxes are turned from normalised ``cxcywh`` into pixel ``xyxy`` of the image they were found
in (its real, unpadded size), so the small/medium/large buckets (areas below 32², below 96², above)
are in pixels of the images the model saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert

from vlp.batch import Targets

FIGURES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")
"""What :func:`map_figures` reports: AP (IoU 0.50:0.95), AP50, AP75, APs/m/l and AR@100."""


def image_sizes(pixel_mask: Tensor) -> Tensor:
    """``[B, 2]`` (height, width) of each image's real pixels (images are padded right and bottom)."""
    if pixel_mask.ndim != 3:
        raise ValueError(f"pixel_mask must be [B, H, W], got {tuple(pixel_mask.shape)}")
    mask = pixel_mask.bool()
    return torch.stack([mask.any(2).sum(1), mask.any(1).sum(1)], dim=1)


def to_pixels(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Normalised ``cxcywh`` ``[B, N, 4]`` → pixel ``xyxy`` of images of ``sizes [B, 2]`` (h, w)."""
    scale = sizes.flip(1).repeat(1, 2).to(boxes.dtype)[:, None]  # [B, 1, 4] = (w, h, w, h)
    return box_convert(boxes, "cxcywh", "xyxy") * scale


def detections(
    logits: Tensor, boxes: Tensor, sizes: Tensor, scores: str = "softmax"
) -> list[dict[str, Tensor]]:
    """Last-layer ``logits [B, Q, C + 1]`` (no-object last) and ``boxes [B, Q, 4]`` → one dict of
    ``boxes`` (pixel xyxy), ``scores`` and ``labels`` per image, as MeanAveragePrecision takes them.

    ``scores="sigmoid"`` (a head trained with the focal loss): each class's sigmoid, the no-object
    column unread (Deformable DETR's ``PostProcess`` keeps the top query-class pairs; one per query here,
    as with the softmax)."""
    if logits.ndim != 3 or boxes.shape != (*logits.shape[:2], 4) or sizes.shape != (logits.shape[0], 2):
        raise ValueError(
            f"expected logits [B, Q, C+1], boxes [B, Q, 4], sizes [B, 2]; got {tuple(logits.shape)}, "
            f"{tuple(boxes.shape)}, {tuple(sizes.shape)}"
        )
    if scores == "softmax":
        probabilities = logits.float().softmax(-1)[..., :-1]
    elif scores == "sigmoid":
        probabilities = logits.float()[..., :-1].sigmoid()
    else:
        raise ValueError(f"scores must be 'softmax' or 'sigmoid', got {scores!r}")
    confidence, labels = probabilities.max(-1)
    pixels = to_pixels(boxes.float(), sizes)
    return [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(pixels, confidence, labels)]


def ground_truth(targets: Sequence[Targets], sizes: Tensor) -> list[dict[str, Tensor]]:
    """Targets (normalised cxcywh) → one dict of ``boxes`` (pixel xyxy) and ``labels`` per image."""
    if len(targets) != len(sizes):
        raise ValueError(f"{len(targets)} targets for {len(sizes)} images")
    return [
        {"boxes": to_pixels(t.boxes.float()[None], size[None])[0], "labels": t.labels.long()}
        for t, size in zip(targets, sizes)
    ]


def mean_average_precision() -> MeanAveragePrecision:
    """COCO bbox evaluation (pycocotools backend) over pixel ``xyxy`` boxes."""
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")


def map_figures(result: dict[str, Tensor]) -> dict[str, Tensor]:
    """The :data:`FIGURES` of a ``MeanAveragePrecision.compute()`` result (``-1`` where COCO has no
    object of that size, as pycocotools reports it)."""
    return {name: result[name].float() for name in FIGURES}
