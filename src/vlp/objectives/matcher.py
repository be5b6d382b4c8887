"""Hungarian matching of predicted boxes to target boxes (DETR's bipartite matching).

The cost of giving target ``j`` to query ``i`` is DETR's ``cost_class * (-p_i[label_j]) + cost_bbox *
|box_i - box_j|_1 + cost_giou * (-GIoU(box_i, box_j))``. Unlike DETR's reference matcher, which scores
every query of the batch against every target of the batch and keeps only the per-image diagonal blocks,
the targets are padded to the largest count and only the ``[B, Q, M_max]`` blocks are computed, for every
decoder layer in the same call; the costs then cross to the host in one transfer and scipy's
``linear_sum_assignment`` solves each image (and layer) on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_convert

from vlp.batch import Targets

Assignment = tuple[Tensor, Tensor]  # (query indices, target indices), int64, one image
SCORES = ("softmax", "sigmoid")
"""How class logits become scores: a softmax over the classes and "no object" (DETR, cross-entropy),
or a sigmoid per class with no no-object column read (Deformable DETR, focal loss)."""


def box_giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of ``xyxy`` boxes, element by element with broadcasting: ``[..., 4] x [..., 4] -> [...]``.

    ``torchvision.ops.generalized_box_iou`` is pairwise over two flat lists only; broadcasting gives
    both the batched pairwise matrix (``boxes1[..., :, None, :]`` against ``boxes2[..., None, :, :]``)
    and the matched pairs of the loss without building a matrix to take its diagonal.
    """
    x1a, y1a, x2a, y2a = boxes1.unbind(-1)  # per coordinate: contiguous broadcasts, no [..., 2] strides
    x1b, y1b, x2b, y2b = boxes2.unbind(-1)
    inner_w = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp(min=0)
    inner_h = (torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)).clamp(min=0)
    intersection = inner_w * inner_h
    union = (x2a - x1a) * (y2a - y1a) + (x2b - x1b) * (y2b - y1b) - intersection
    hull = (torch.maximum(x2a, x2b) - torch.minimum(x1a, x1b)) * (
        torch.maximum(y2a, y2b) - torch.minimum(y1a, y1b)
    )
    return intersection / union - (hull - union) / hull


@dataclass
class PaddedTargets:
    """A batch's targets padded to the largest box count ``M`` (padding rows are valid dummy boxes)."""

    labels: Tensor  # [B, M] long
    boxes: Tensor  # [B, M, 4] float cxcywh
    attributes: Tensor  # [B, M, A] float multi-hot
    counts: list[int]  # real boxes per image (host ints: read from shapes, no device sync)

    @property
    def num_boxes(self) -> int:
        return sum(self.counts)


def pad_targets(targets: Sequence[Targets], device: torch.device | str | None = None) -> PaddedTargets:
    """Check every image's targets (shapes and dtypes, naming the field) and pad them into tensors."""
    if len(targets) == 0:
        raise ValueError("targets is empty: one Targets per image is needed")
    widths = set()
    for i, target in enumerate(targets):
        boxes, labels, attributes = target.boxes, target.labels, target.attributes
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise ValueError(
                f"targets[{i}].boxes must be a float [M, 4] tensor, got {boxes.dtype} {tuple(boxes.shape)}"
            )
        if labels.shape != (len(boxes),) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(
                f"targets[{i}].labels must be an integer [M] tensor with M = {len(boxes)} boxes, "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        if attributes.ndim != 2 or len(attributes) != len(boxes) or not attributes.is_floating_point():
            raise ValueError(
                f"targets[{i}].attributes must be a float [M, A] tensor with M = {len(boxes)} boxes, "
                f"got {attributes.dtype} {tuple(attributes.shape)}"
            )
        widths.add(attributes.shape[1])
    if len(widths) > 1:
        raise ValueError(f"targets[*].attributes must share one width A, got {sorted(widths)}")
    device = targets[0].boxes.device if device is None else device
    return PaddedTargets(
        labels=pad_sequence([t.labels.to(device, torch.long) for t in targets], batch_first=True),
        boxes=pad_sequence([t.boxes.to(device) for t in targets], batch_first=True, padding_value=0.5),
        attributes=pad_sequence([t.attributes.to(device) for t in targets], batch_first=True),
        counts=[len(t.boxes) for t in targets],
    )


def assign(cost: Tensor, counts: Sequence[int]) -> list[Assignment]:
    """Solve each block of a host cost tensor ``[N, Q, M_max]``, block ``n`` over its first ``counts[n]``
    columns. Raises scipy's ``ValueError`` on non-finite entries."""
    if cost.shape[0] != len(counts):
        raise ValueError(f"cost has {cost.shape[0]} blocks but counts has {len(counts)}")
    array = cost.numpy()
    empty = torch.zeros(0, dtype=torch.int64)
    assignments = []
    for block, count in zip(array, counts):
        if count == 0:
            assignments.append((empty, empty))
            continue
        rows, cols = linear_sum_assignment(block[:, :count])
        assignments.append((torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(cols.astype(np.int64))))
    return assignments


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target boxes minimising DETR's matching cost (no gradient).

    Args:
        cost_class: weight of the class term.
        cost_bbox: weight of the L1 distance between ``cxcywh`` boxes.
        cost_giou: weight of minus the generalized IoU.
        scores: how the class term reads the logits. ``"softmax"`` (DETR): minus the softmax
            probability of the target class over all columns, no-object included. ``"sigmoid"``
            (Deformable DETR, to go with the focal loss): the focal loss of calling the query the target
            class minus that of not calling it, ``alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma
            (-log(1 - p))`` with ``p`` the sigmoid of the target class's logit; the no-object column is
            not read.
        focal_alpha, focal_gamma: of the sigmoid cost.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        scores: str = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if min(cost_class, cost_bbox, cost_giou) < 0 or cost_class == cost_bbox == cost_giou == 0:
            raise ValueError(
                "HungarianMatcher costs must be >= 0 and not all 0, got "
                f"cost_class={cost_class}, cost_bbox={cost_bbox}, cost_giou={cost_giou}"
            )
        if scores not in SCORES:
            raise ValueError(f"HungarianMatcher scores must be one of {SCORES}, got {scores!r}")
        if not 0 <= focal_alpha <= 1 or focal_gamma < 0:
            raise ValueError(
                f"focal_alpha must be in [0, 1] and focal_gamma >= 0, got {focal_alpha}, {focal_gamma}"
            )
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.scores = scores
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, targets: PaddedTargets) -> Tensor:
        """The matching costs ``[N, Q, M]`` of ``logits [..., B, Q, C+1]`` and ``boxes [..., B, Q, 4]``
        against the padded targets ``[B, M]``; the leading dims (decoder layers) are flattened into ``N``.

        A target whose label is outside ``[0, C)`` or whose box is not finite or has a negative size
        gets NaN costs, so that a bad target costs no check (and no device sync) unless it is there.
        """
        *lead, batch, queries, classes = logits.shape
        num_targets = targets.labels.shape[1]
        index = targets.labels.clamp(0, classes - 2)[:, None, :].expand(*lead, batch, queries, num_targets)
        if self.scores == "softmax":
            class_cost = -logits.float().softmax(-1).gather(-1, index)
        else:
            prob = logits.float().sigmoid().gather(-1, index)
            alpha, gamma, eps = self.focal_alpha, self.focal_gamma, 1e-8
            positive = alpha * (1 - prob) ** gamma * -(prob + eps).log()
            negative = (1 - alpha) * prob**gamma * -(1 - prob + eps).log()
            class_cost = positive - negative
        pred = boxes.float()
        goal = targets.boxes.float().expand(*lead, batch, num_targets, 4)
        bbox_cost = torch.cdist(pred, goal, p=1)
        giou = box_giou(
            box_convert(pred, "cxcywh", "xyxy")[..., :, None, :],
            box_convert(goal, "cxcywh", "xyxy")[..., None, :, :],
        )  # [..., B, Q, M]
        cost = self.cost_bbox * bbox_cost + self.cost_class * class_cost - self.cost_giou * giou
        labels, goal_boxes = targets.labels, targets.boxes
        valid = (
            (labels >= 0)
            & (labels < classes - 1)
            & torch.isfinite(goal_boxes).all(-1)
            & (goal_boxes[..., 2:] >= 0).all(-1)
        )
        cost = cost.masked_fill(~valid[:, None, :], float("nan"))
        return cost.reshape(-1, queries, num_targets)

    @torch.no_grad()
    def forward(
        self, logits: Tensor, boxes: Tensor, targets: PaddedTargets | Sequence[Targets]
    ) -> list[Assignment]:
        """Match ``logits [..., B, Q, C+1]`` and ``boxes [..., B, Q, 4]`` (``cxcywh``) to the targets.

        Returns one ``(query_idx, target_idx)`` pair of int64 host tensors per image, each of length
        ``min(Q, M_image)``, with ``query_idx`` ascending; with leading dims (``[L, B, ...]``, one per
        decoder layer) the list runs over ``L * B`` images, layer by layer.
        """
        if not isinstance(targets, PaddedTargets):
            targets = pad_targets(targets, logits.device)
        check_predictions(logits, boxes, len(targets.counts))
        blocks = int(np.prod(logits.shape[:-2]))
        if targets.num_boxes == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [(empty, empty)] * blocks
        cost = self.cost_matrix(logits, boxes, targets).cpu()  # the one device-to-host transfer
        counts = targets.counts * (blocks // len(targets.counts))
        try:
            return assign(cost, counts)
        except ValueError as error:
            raise ValueError(explain_bad_cost(logits, boxes, targets)) from error


def check_predictions(logits: Tensor, boxes: Tensor, batch_size: int) -> None:
    """Shapes only (no device sync): ``logits [..., B, Q, C+1]`` and ``boxes [..., B, Q, 4]``."""
    if logits.ndim < 3 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits must be [..., B, Q, num_classes + 1] with num_classes >= 1, got {tuple(logits.shape)}"
        )
    if boxes.shape != (*logits.shape[:-1], 4):
        raise ValueError(
            f"boxes must be [..., B, Q, 4] like logits {tuple(logits.shape)}, got {tuple(boxes.shape)}"
        )
    if logits.shape[-3] != batch_size:
        raise ValueError(f"logits cover {logits.shape[-3]} images but targets has {batch_size}")


def explain_bad_cost(logits: Tensor, boxes: Tensor, targets: PaddedTargets) -> str:
    """Name what made the matching cost non-finite (only called on that failure, so it may sync)."""
    num_classes = logits.shape[-1] - 1
    for i, count in enumerate(targets.counts):
        labels, goal = targets.labels[i, :count], targets.boxes[i, :count]
        if ((labels < 0) | (labels >= num_classes)).any():
            return f"targets[{i}].labels has values outside [0, {num_classes}): {labels.tolist()}"
        if not torch.isfinite(goal).all() or (goal[:, 2:] < 0).any():
            return f"targets[{i}].boxes must be finite cxcywh with sizes >= 0, got {goal.tolist()}"
    if not torch.isfinite(logits).all():
        return "logits (predicted class scores) contain NaN or infinity"
    if not torch.isfinite(boxes).all():
        return "boxes (predicted boxes) contain NaN or infinity"
    return "the matching cost is not finite (degenerate predicted boxes of zero width and height?)"
