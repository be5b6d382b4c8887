"""Set-prediction detection (DETR, as E2E-VLP uses it): Hungarian matching, then class, attribute and box losses.

Every decoder layer is matched on its own and supervised with the same weights (DETR's auxiliary losses),
but the work is not repeated per layer: the matcher scores all layers in one call with one host transfer,
and each loss is computed for all layers in one go, then summed per layer with ``index_add``.

Only images whose objects are annotated are supervised (``Batch.objects_annotated``; ``objects: []`` is
annotated, an image without an ``objects`` list is not): the others are dropped before matching, so
they add no "no object" class loss and no box: the cross-entropy's weighted mean runs over the annotated
images' queries and the box normaliser counts their boxes (the mean over processes,
:func:`num_boxes_across_processes`). A batch with no annotated image has a zero loss that keeps every parameter the loss reads in the graph
(DDP, ``find_unused_parameters=False``) and joins the box count's all-reduce like any other batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, sigmoid_focal_loss

from vlp.batch import Batch, Targets
from vlp.models.e2e_vlp.model import ObjectQueryOutput
from vlp.models.layers.heads import DetectionHead
from vlp.models.outputs import DecoderOutput, DetectionPredictions
from vlp.objectives.base import Objective, ObjectiveOutput
from vlp.objectives.matcher import Assignment, HungarianMatcher, PaddedTargets, box_giou, pad_targets

CLASS_LOSSES = {"ce": "softmax", "focal": "sigmoid"}
FOCAL_PRIOR = 0.01
"""Class losses and the matcher scores (:data:`vlp.objectives.matcher.SCORES`) each goes with."""


@dataclass
class SetLosses:
    """Unweighted losses of every decoder layer (``[L]``, the last layer last) and last-layer figures."""

    ce: Tensor  # class loss: cross-entropy, no-object down-weighted, weighted mean over queries; or focal / boxes
    l1: Tensor  # L1 of matched cxcywh boxes, summed, / boxes
    giou: Tensor  # 1 - GIoU of matched boxes, summed, / boxes
    attribute: Tensor | None  # BCE over the attributes (mean over A) of matched boxes, summed, / boxes
    class_accuracy: Tensor  # last layer: matched queries whose argmax is the target class
    cardinality_error: Tensor  # last layer: mean |#queries not predicting no-object - #targets|


def num_boxes_across_processes(count: int, device: torch.device) -> float | Tensor:
    """Target boxes per process averaged over all processes, at least 1 (DETR's normaliser).

    Without a process group this is a Python number; with one, a tensor all-reduced on ``device`` (no
    host sync either way).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return max(float(count), 1.0)
    total = torch.tensor(float(count), device=device)
    dist.all_reduce(total)
    return (total / dist.get_world_size()).clamp(min=1.0)


class SetCriterion(nn.Module):
    """DETR's set criterion on the predictions of every decoder layer.

    Args:
        num_classes: object categories; the logits have one more column, "no object".
        matcher: the assignment of queries to targets (default: costs class 1, L1 5, GIoU 2, with the
            scores of ``class_loss``; a matcher of the other scores is refused).
        eos_coef: cross-entropy weight of the no-object class relative to the others.
        ce_weight, bbox_weight, giou_weight, attribute_weight: multipliers of the four losses
            (``ce_weight`` multiplies the class loss, whichever it is).
        aux_loss: supervise every decoder layer (DETR's auxiliary losses); ``False``: the last only.
        class_loss: ``"ce"`` (DETR): softmax cross-entropy over the classes and "no object", the
            weighted mean over queries. ``"focal"`` (Deformable DETR): the sigmoid focal loss of every
            query and class against one-hot targets (all zeros for unmatched queries; the no-object
            column is not read), summed and divided by the number of target boxes. The focal loss
            spends its gradient on the queries and classes that are still wrong, where the
            cross-entropy of many easy no-object queries swamps the few matched ones.
        focal_alpha, focal_gamma: of the focal loss (RetinaNet, Deformable DETR: 0.25, 2).
    """

    class_weight: Tensor

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        eos_coef: float = 0.1,
        ce_weight: float = 1.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        attribute_weight: float = 1.0,
        aux_loss: bool = True,
        class_loss: str = "ce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_loss not in CLASS_LOSSES:
            raise ValueError(f"class_loss must be one of {sorted(CLASS_LOSSES)}, got {class_loss!r}")
        if not 0 <= focal_alpha <= 1 or focal_gamma < 0:
            raise ValueError(
                f"focal_alpha must be in [0, 1] and focal_gamma >= 0, got {focal_alpha}, {focal_gamma}"
            )
        scores = CLASS_LOSSES[class_loss]
        if matcher is not None and matcher.scores != scores:
            raise ValueError(
                f"class_loss={class_loss!r} needs a matcher with scores={scores!r}, got {matcher.scores!r}"
            )
        if eos_coef < 0 or min(ce_weight, bbox_weight, giou_weight, attribute_weight) < 0:
            raise ValueError(
                "eos_coef and the loss weights must be >= 0, got "
                f"eos_coef={eos_coef}, ce_weight={ce_weight}, bbox_weight={bbox_weight}, "
                f"giou_weight={giou_weight}, attribute_weight={attribute_weight}"
            )
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher(scores=scores)
        self.class_loss_name = class_loss
        self.scores = scores
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.eos_coef = eos_coef
        self.weights = {
            "ce": ce_weight,
            "l1": bbox_weight,
            "giou": giou_weight,
            "attribute": attribute_weight,
        }
        self.aux_loss = aux_loss
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(
        self,
        predictions: DetectionPredictions,
        targets: Sequence[Targets],
        annotated: Sequence[bool] | None = None,
    ) -> ObjectiveOutput:
        """The weighted sum over layers and losses, and the last layer's figures as logs.

        ``annotated``: which images are supervised (``None``: all). The loss is that of the annotated
        images alone; with none, a zero loss (and zero figures) that keeps every prediction in the graph.
        """
        rows = annotated_rows(annotated, len(targets))
        if rows is None:
            losses = self.losses(predictions, targets)
        elif rows:
            self.check_logits(predictions.logits, len(targets))
            losses = self.losses(select_images(predictions, rows), [targets[i] for i in rows])
        else:
            losses = self.unsupervised(predictions, targets)
        per_layer = self.weights["ce"] * losses.ce + self.weights["l1"] * losses.l1
        per_layer = per_layer + self.weights["giou"] * losses.giou
        if losses.attribute is not None:
            per_layer = per_layer + self.weights["attribute"] * losses.attribute
        logs = {
            "det_ce": losses.ce[-1].detach(),
            "det_l1": losses.l1[-1].detach(),
            "det_giou": losses.giou[-1].detach(),
            "det_class_acc": losses.class_accuracy,
            "det_cardinality_error": losses.cardinality_error,
        }
        if losses.attribute is not None:
            logs["det_attribute"] = losses.attribute[-1].detach()
        if len(per_layer) > 1:
            logs["det_aux_loss"] = per_layer[:-1].sum().detach()
        return ObjectiveOutput(per_layer.sum(), logs)

    def losses(self, predictions: DetectionPredictions, targets: Sequence[Targets]) -> SetLosses:
        """Match every layer, then compute each loss for all layers at once (fp32, autocast off)."""
        logits, boxes, attribute_logits = self.supervised_layers(predictions, targets)
        padded = pad_targets(targets, logits.device)
        check_attribute_logits(attribute_logits, logits, padded)
        indices = self.matcher(logits.detach(), boxes.detach(), padded)
        layers, batch = logits.shape[:2]
        pairs = MatchedPairs.of(indices, batch, logits.device)
        num_boxes = num_boxes_across_processes(padded.num_boxes, logits.device)

        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            ce = self.matched_class_loss(logits, padded, pairs, num_boxes)
            l1, giou, attribute = matched_box_losses(boxes, attribute_logits, padded, pairs)
            accuracy, cardinality_error = matching_figures(
                logits[-1], padded, pairs.last_layer(layers), self.scores
            )

        return SetLosses(
            ce=ce,
            l1=pairs.per_layer_sum(l1, layers) / num_boxes,
            giou=pairs.per_layer_sum(giou, layers) / num_boxes,
            attribute=pairs.per_layer_sum(attribute, layers) / num_boxes if attribute is not None else None,
            class_accuracy=accuracy,
            cardinality_error=cardinality_error,
        )

    def unsupervised(self, predictions: DetectionPredictions, targets: Sequence[Targets]) -> SetLosses:
        """Zero losses of a batch with no annotated image, each ``0 *`` the sum of what it reads, so that
        every parameter behind the predictions gets a (zero) gradient as in any other step; the box count
        is still all-reduced (0 here), as the processes with annotated images wait for it."""
        logits, boxes, attribute_logits = self.supervised_layers(predictions, targets)
        padded = pad_targets(targets, logits.device)
        check_attribute_logits(attribute_logits, logits, padded)
        num_boxes_across_processes(0, logits.device)
        zero = logits.new_zeros((), dtype=torch.float)

        def nothing(tensor: Tensor) -> Tensor:
            return tensor.float().flatten(1).sum(1) * 0.0

        return SetLosses(
            ce=nothing(logits),
            l1=nothing(boxes),
            giou=torch.zeros(len(logits), device=logits.device),
            attribute=nothing(attribute_logits) if attribute_logits is not None else None,
            class_accuracy=zero,
            cardinality_error=zero,
        )

    def supervised_layers(
        self, predictions: DetectionPredictions, targets: Sequence[Targets]
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The logits, boxes and attribute logits of the layers the loss supervises: all of them, or
        the last alone without ``aux_loss``; the logits are checked against ``targets``."""
        logits, boxes, attribute_logits = predictions.logits, predictions.boxes, predictions.attribute_logits
        self.check_logits(logits, len(targets))
        if not self.aux_loss:
            logits, boxes = logits[-1:], boxes[-1:]
            attribute_logits = attribute_logits[-1:] if attribute_logits is not None else None
        return logits, boxes, attribute_logits

    def check_logits(self, logits: Tensor, images: int) -> None:
        """``logits`` are ``[L, B, Q, num_classes + 1]`` with one image per target (``images``)."""
        if logits.ndim != 4 or logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"predictions.logits must be [L, B, Q, num_classes + 1 = {self.num_classes + 1}], "
                f"got {tuple(logits.shape)}"
            )
        if images != logits.shape[1]:
            raise ValueError(f"targets has {images} images but predictions.logits has {logits.shape[1]}")

    def matched_class_loss(
        self, logits: Tensor, padded: PaddedTargets, pairs: MatchedPairs, num_boxes: float | Tensor
    ) -> Tensor:
        """Per layer ``[L]``: the class loss of ``logits [L, B, Q, C+1]`` against the matched targets'
        labels, unmatched queries "no object"; the focal loss is divided by ``num_boxes``."""
        layers, batch, queries = logits.shape[:3]
        classes = torch.full((layers * batch, queries), self.num_classes, device=logits.device)
        classes[pairs.block, pairs.query] = padded.labels[pairs.image, pairs.target]
        if self.class_loss_name == "ce":
            return self.class_loss(logits, classes.view(layers, batch, queries))
        return self.focal_loss(logits, classes.view(layers, batch, queries)) / num_boxes

    def class_loss(self, logits: Tensor, classes: Tensor) -> Tensor:
        """Per layer ``[L]``: cross-entropy of ``logits [L, B, Q, C+1]`` against ``classes [L, B, Q]``, the
        weighted mean over queries with the no-object class weighing ``eos_coef`` (DETR)."""
        layers = logits.shape[0]
        nll = F.cross_entropy(logits.flatten(0, 2), classes.flatten(), self.class_weight, reduction="none")
        return nll.view(layers, -1).sum(1) / self.class_weight[classes].view(layers, -1).sum(1)

    def focal_loss(self, logits: Tensor, classes: Tensor) -> Tensor:
        """Per layer ``[L]``: the sigmoid focal loss of ``logits [L, B, Q, C+1]`` without the no-object
        column against one-hot ``classes [L, B, Q]`` (class ``C``, no object, is all zeros), summed."""
        one_hot = F.one_hot(classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
        loss = sigmoid_focal_loss(logits[..., :-1], one_hot, self.focal_alpha, self.focal_gamma)
        return loss.flatten(1).sum(1)


def annotated_rows(annotated: Sequence[bool] | None, images: int) -> list[int] | None:
    """The indices of the annotated images; ``None`` when every image is (nothing to leave out)."""
    if annotated is None:
        return None
    if len(annotated) != images:
        raise ValueError(f"objects_annotated has {len(annotated)} flags for {images} images")
    if all(annotated):
        return None
    return [i for i, flag in enumerate(annotated) if flag]


def annotated_images(batch: Batch, items: Sequence[Any]) -> list[Any]:
    """The ``items`` (one per image of ``batch``) of the images whose objects are annotated, for the
    detection metrics: the others have no ground truth to score detections against."""
    rows = annotated_rows(batch.objects_annotated, len(items))
    return list(items) if rows is None else [items[i] for i in rows]


def select_images(predictions: DetectionPredictions, rows: Sequence[int]) -> DetectionPredictions:
    """The predictions ``[L, B, Q, ...]`` of images ``rows`` only: ``[L, len(rows), Q, ...]``."""
    index = torch.tensor(rows, dtype=torch.long).to(predictions.logits.device, non_blocking=True)

    def select(tensor: Tensor | None) -> Tensor | None:
        return None if tensor is None else tensor.index_select(1, index)

    return DetectionPredictions(
        select(predictions.logits), select(predictions.boxes), select(predictions.attribute_logits)
    )


@torch.no_grad()
def matching_figures(
    logits: Tensor, padded: PaddedTargets, pairs: MatchedPairs, scores: str = "softmax"
) -> tuple[Tensor, Tensor]:
    """One layer's class accuracy over its matched ``pairs`` and its cardinality error (DETR's log):
    the mean over images of ``|queries predicting an object - targets|``; a query predicts an object
    when its arg-max is not no-object (``scores="softmax"``) or a class's sigmoid passes 0.5
    (``"sigmoid"``, whose arg-max is over the classes alone). No host sync."""
    no_object = logits.shape[-1] - 1
    if scores == "sigmoid":
        logits = logits[..., :no_object]
    image, labels = pairs.image, padded.labels
    correct = (logits[image, pairs.query].argmax(-1) == labels[image, pairs.target]).float().sum()
    accuracy = correct / max(len(image), 1)
    if scores == "sigmoid":
        predicted = (logits.max(-1).values > 0).sum(-1).float()
    else:
        predicted = (logits.argmax(-1) != no_object).sum(-1).float()
    expected = torch.tensor(padded.counts, dtype=torch.float, device=logits.device)
    return accuracy, (predicted - expected).abs().mean()


@dataclass
class MatchedPairs:
    """Every layer's matched (query, target) pairs, flat and layer by layer: pair ``k`` is query
    ``query[k]`` of image ``image[k]`` in decoder layer ``layer[k]`` and that image's target
    ``target[k]``; ``block = layer * B + image`` is its row of the ``[L * B, Q]`` queries."""

    block: Tensor
    query: Tensor
    target: Tensor
    image: Tensor
    layer: Tensor

    @classmethod
    def of(cls, indices: list[Assignment], batch: int, device: torch.device) -> MatchedPairs:
        """The matcher's per-block assignments (``L * B`` of them, layer by layer) on ``device``."""
        sizes = torch.tensor([len(q) for q, _ in indices], dtype=torch.int64)
        block = torch.repeat_interleave(torch.arange(len(indices)), sizes).to(device)
        query = torch.cat([q for q, _ in indices]).to(device)
        target = torch.cat([t for _, t in indices]).to(device)
        return cls(block, query, target, block % batch, block // batch)

    def last_layer(self, layers: int) -> MatchedPairs:
        """The last layer's pairs: the blocks run layer by layer, so they are the last ``K / L``."""
        last = slice(len(self.block) - len(self.block) // layers, len(self.block))
        return MatchedPairs(
            self.block[last], self.query[last], self.target[last], self.image[last], self.layer[last]
        )

    def per_layer_sum(self, values: Tensor, layers: int) -> Tensor:
        """Sum ``values [K]`` (one per pair) by decoder layer: ``[layers]``."""
        return values.new_zeros(layers).index_add(0, self.layer, values)


def check_attribute_logits(attribute_logits: Tensor | None, logits: Tensor, padded: PaddedTargets) -> None:
    """Attribute logits, when there are any, are ``[L, B, Q, A]`` like ``logits`` with the targets' ``A``."""
    expected = (*logits.shape[:-1], padded.attributes.shape[-1])
    if attribute_logits is not None and attribute_logits.shape != expected:
        raise ValueError(
            f"predictions.attribute_logits {tuple(attribute_logits.shape)} must be [L, B, Q, A] with the "
            f"targets' A = {padded.attributes.shape[-1]} attributes"
        )


def matched_box_losses(
    boxes: Tensor, attribute_logits: Tensor | None, padded: PaddedTargets, pairs: MatchedPairs
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per matched pair ``[K]``, in fp32: the L1 of the cxcywh boxes, ``1 - GIoU``, and the BCE of the
    attributes (mean over ``A``; ``None`` without attribute logits)."""
    matched = boxes.float().flatten(0, 1)[pairs.block, pairs.query]  # [K, 4], K matched pairs of all layers
    goal = padded.boxes[pairs.image, pairs.target].float()
    l1 = (matched - goal).abs().sum(-1)
    giou = 1 - box_giou(box_convert(matched, "cxcywh", "xyxy"), box_convert(goal, "cxcywh", "xyxy"))
    if attribute_logits is None:
        return l1, giou, None
    attribute = F.binary_cross_entropy_with_logits(
        attribute_logits.float().flatten(0, 1)[pairs.block, pairs.query],
        padded.attributes[pairs.image, pairs.target].float(),
        reduction="none",
    ).mean(-1)
    return l1, giou, attribute


class DetectionObjective(Objective):
    """E2E-VLP's object detection: a :class:`DetectionHead` on every decoder layer, DETR's set criterion.

    Reads :class:`~vlp.models.outputs.DecoderOutput` (``query_states [L, B, Q, D]``), ``batch.targets``
    and ``batch.objects_annotated`` (images without annotated objects are not supervised, see the
    module's docstring). The loss sums the layers (DETR's auxiliary losses) and, per layer,
    ``ce_weight * CE + bbox_weight * L1 + giou_weight * (1 - GIoU) + attribute_weight * BCE``; the
    attribute term is there when the head predicts attributes. ``matcher`` and the keyword arguments
    ``criterion`` (``eos_coef``, the loss weights, ``aux_loss``, ``class_loss``, ``focal_alpha``,
    ``focal_gamma``) go to :class:`SetCriterion`, which documents and checks them (jsonargparse reads
    them from there, so a recipe sets them under this class's ``init_args``); with
    ``class_loss="focal"`` the head's class biases start at the log-odds of 0.01 (RetinaNet's prior).
    """

    view = "detection"

    def __init__(
        self, head: DetectionHead, matcher: HungarianMatcher | None = None, **criterion: Any
    ) -> None:
        super().__init__()
        self.head = head
        self.input_dim = head.input_dim
        self.criterion = SetCriterion(head.num_classes, matcher, **criterion)
        if self.criterion.class_loss_name == "focal":
            # RetinaNet's prior: every class starts at probability 0.01, not the sigmoid's 0.5, so the
            # first steps are not spent pushing every query's every class down
            nn.init.constant_(head.class_embed.bias, -math.log((1 - FOCAL_PRIOR) / FOCAL_PRIOR))

    @property
    def scores(self) -> str:
        """How the head's logits become class scores (``"softmax"`` or ``"sigmoid"``), for evaluation."""
        return self.criterion.scores

    def predict(self, outputs: DecoderOutput, last_only: bool = False) -> DetectionPredictions:
        """The head over every decoder layer's states (``last_only``: the last layer's, ``[1, B, Q]``).

        Anchored queries (an :class:`~vlp.models.e2e_vlp.model.ObjectQueryOutput` with reference boxes)
        predict boxes as offsets of their reference boxes, ``sigmoid(reference + bbox_embed(state))``
        (DAB-DETR): the head's regression MLP gives the offset in logit space.
        """
        states = outputs.query_states
        if states.ndim != 4 or states.shape[-1] != self.input_dim:
            raise ValueError(
                f"outputs.query_states must be [L, B, Q, D = {self.input_dim}], got {tuple(states.shape)}"
            )
        if last_only:
            states = states[-1:]
        if not isinstance(outputs, ObjectQueryOutput) or outputs.reference_boxes is None:
            return self.head(states)
        reference = outputs.reference_boxes[-1:] if last_only else outputs.reference_boxes
        if reference.shape != (*states.shape[:3], 4):
            raise ValueError(
                f"outputs.reference_boxes must be [L, B, Q, 4] like the states {tuple(states.shape[:3])}, "
                f"got {tuple(reference.shape)}"
            )
        head = self.head
        return DetectionPredictions(
            logits=head.class_embed(states),
            boxes=(head.bbox_embed(states) + reference.to(states.dtype)).sigmoid(),
            attribute_logits=head.attribute_embed(states) if head.attribute_embed is not None else None,
        )

    def forward(self, outputs: DecoderOutput, batch: Batch) -> ObjectiveOutput:
        if batch.targets is None:
            raise ValueError(
                "DetectionObjective needs batch.targets; enable detection targets in the data module"
            )
        # without aux losses the head need not run on layers nobody supervises
        predictions = self.predict(outputs, last_only=not self.criterion.aux_loss)
        groups = outputs.groups if isinstance(outputs, ObjectQueryOutput) else 1
        annotated = batch.objects_annotated
        if groups == 1:
            return self.criterion(predictions, batch.targets, annotated)
        # Group DETR: each group is matched and supervised as an image of its own with the same targets
        # (the losses, normalised by G times the boxes, are the mean over the groups)
        targets = [target for target in batch.targets for _ in range(groups)]
        if annotated is not None:
            annotated = [flag for flag in annotated for _ in range(groups)]
        return self.criterion(split_groups(predictions, groups), targets, annotated)


def split_groups(predictions: DetectionPredictions, groups: int) -> DetectionPredictions:
    """``[L, B, G * Q, ...]`` → ``[L, B * G, Q, ...]``: row ``b * G + g`` holds image ``b``'s group ``g``."""

    def split(tensor: Tensor | None) -> Tensor | None:
        if tensor is None:
            return None
        layers, batch, queries = tensor.shape[:3]
        if queries % groups:
            raise ValueError(f"{queries} queries do not split into {groups} groups")
        return tensor.reshape(layers, batch * groups, queries // groups, *tensor.shape[3:])

    return DetectionPredictions(
        split(predictions.logits), split(predictions.boxes), split(predictions.attribute_logits)
    )
