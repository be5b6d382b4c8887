"""``python -m vlp bench detection-loss``: DETR's matcher + set loss per batch, vlp against transformers.

Both sides get the same predictions of every decoder layer (class logits and sigmoid boxes, leaf tensors
that require grad, as a DETR head would hand them over) and the same targets, and are configured alike:
matching costs class 1, L1 5, GIoU 2; losses cross-entropy (no-object weight 0.1) + 5 L1 + 2 GIoU on
every layer (auxiliary losses), no attributes. One timed step is the matching, the loss and its backward:

- vlp: :class:`~vlp.objectives.detection.SetCriterion` with :class:`~vlp.objectives.matcher.HungarianMatcher`
  (all layers matched in one batched cost computation and one host transfer, each loss computed once
  for all layers);
- transformers: ``ForObjectDetectionLoss``, the function ``DetrForObjectDetection`` calls in training
  (``HungarianMatcher`` + ``ImageLoss``, one layer after the other).

Before timing, both total losses are computed on the same inputs and must agree: otherwise the comparison
would not be of the same computation and the run stops. Steps alternate between the two (vlp first on
even steps, transformers first on odd ones) after untimed warm-up steps; the table gives medians. The last
line printed is ``ratio: R``, transformers' median time divided by vlp's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vlp.batch import Targets
from vlp.bench.command import command_line, cpu_name, parse_options, publish


@dataclass
class DetectionLossConfig:
    """What to measure. The defaults are DETR's COCO sizes with the batch of a small GPU.

    Args:
        batch_size: images per batch.
        queries: object queries per image.
        num_classes: object categories (COCO's 91 ids); the logits have one more, "no object".
        min_boxes, max_boxes: each image has a uniformly drawn number of target boxes in this range.
        layers: decoder layers, all supervised (auxiliary losses on both sides).
        steps: timed steps per side; warmup: untimed steps per side before them.
        threads: torch threads (``None``: torch's default).
        device: where predictions and targets live (``cuda`` times with synchronisation).
    """

    batch_size: int = 8
    queries: int = 100
    num_classes: int = 91
    min_boxes: int = 1
    max_boxes: int = 20
    layers: int = 6
    steps: int = 50
    warmup: int = 5
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.batch_size, self.queries, self.num_classes, self.layers, self.steps) < 1:
            raise ValueError("batch_size, queries, num_classes, layers and steps must be >= 1")
        if not 0 <= self.min_boxes <= self.max_boxes:
            raise ValueError(f"need 0 <= min_boxes <= max_boxes, got {self.min_boxes}, {self.max_boxes}")
        if self.warmup < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError("warmup must be >= 0 and threads >= 1")


@dataclass
class Inputs:
    """One batch for both sides: per-layer predictions and per-image targets."""

    logits: Tensor  # [L, B, Q, C+1]
    boxes: Tensor  # [L, B, Q, 4] cxcywh in (0, 1)
    targets: list[Targets]

    @property
    def num_boxes(self) -> int:
        return sum(len(t.labels) for t in self.targets)

    def fresh(self) -> tuple[Tensor, Tensor]:
        """New leaf copies of the predictions that require grad (a step's backward writes their .grad)."""
        return self.logits.clone().requires_grad_(), self.boxes.clone().requires_grad_()


def make_inputs(config: DetectionLossConfig) -> Inputs:
    """Random logits, boxes spread over the image, and targets with random counts, classes and boxes."""
    generator = torch.Generator().manual_seed(config.seed)
    shape = (config.layers, config.batch_size, config.queries)
    logits = torch.randn(*shape, config.num_classes + 1, generator=generator)
    boxes = torch.sigmoid(torch.randn(*shape, 4, generator=generator) * 0.7)
    targets = []
    for _ in range(config.batch_size):
        count = int(torch.randint(config.min_boxes, config.max_boxes + 1, (), generator=generator))
        sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.02
        centres = torch.rand(count, 2, generator=generator) * (1 - sizes) + sizes / 2  # inside the image
        labels = torch.randint(0, config.num_classes, (count,), generator=generator)
        targets.append(Targets(torch.cat([centres, sizes], 1), labels, torch.zeros(count, 0)))
    device = torch.device(config.device)
    return Inputs(logits.to(device), boxes.to(device), [t.to(device) for t in targets])


def vlp_loss(config: DetectionLossConfig) -> Callable[[Tensor, Tensor, list[Targets]], Tensor]:
    """vlp's matcher + set criterion, configured as DETR (and as the transformers side)."""
    from vlp.models.outputs import DetectionPredictions
    from vlp.objectives.detection import SetCriterion
    from vlp.objectives.matcher import HungarianMatcher

    criterion = SetCriterion(
        config.num_classes,
        HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0),
        eos_coef=0.1,
        ce_weight=1.0,
        bbox_weight=5.0,
        giou_weight=2.0,
        aux_loss=True,
    ).to(config.device)

    def loss(logits: Tensor, boxes: Tensor, targets: list[Targets]) -> Tensor:
        return criterion(DetectionPredictions(logits, boxes), targets).loss

    return loss


def transformers_loss(config: DetectionLossConfig) -> Callable[[Tensor, Tensor, list[Targets]], Tensor]:
    """transformers' ``ForObjectDetectionLoss`` as ``DetrForObjectDetection`` calls it, same weights."""
    from transformers import DetrConfig
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    detr = DetrConfig(
        num_labels=config.num_classes,
        decoder_layers=config.layers,
        auxiliary_loss=True,
        class_cost=1,
        bbox_cost=5,
        giou_cost=2,
        eos_coefficient=0.1,
        bbox_loss_coefficient=5,
        giou_loss_coefficient=2,
        use_pretrained_backbone=False,
    )

    def loss(logits: Tensor, boxes: Tensor, targets: list[Targets]) -> Tensor:
        labels = [{"class_labels": t.labels, "boxes": t.boxes} for t in targets]
        total, _, _ = ForObjectDetectionLoss(
            logits[-1], labels, logits.device, boxes[-1], detr, outputs_class=logits, outputs_coord=boxes
        )
        return total

    return loss


def compare_losses(config: DetectionLossConfig, inputs: Inputs) -> tuple[float, float]:
    """Both sides' total loss on the same inputs: ``(vlp, transformers)``."""
    with torch.no_grad():
        ours = vlp_loss(config)(inputs.logits, inputs.boxes, inputs.targets)
        theirs = transformers_loss(config)(inputs.logits, inputs.boxes, inputs.targets)
    return float(ours), float(theirs)


def synchronise(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_steps(config: DetectionLossConfig, inputs: Inputs) -> dict[str, list[float]]:
    """Seconds per step (matching + loss + backward) of each side, steps interleaved."""
    sides = {"vlp": vlp_loss(config), "transformers": transformers_loss(config)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for step in range(config.warmup + config.steps):
        order = list(sides) if step % 2 == 0 else list(reversed(sides))
        for name in order:
            logits, boxes = inputs.fresh()
            synchronise(config.device)
            start = time.perf_counter()
            sides[name](logits, boxes, inputs.targets).backward()
            synchronise(config.device)
            if step >= config.warmup:
                times[name].append(time.perf_counter() - start)
    return times


def markdown(
    config: DetectionLossConfig,
    inputs: Inputs,
    times: dict[str, list[float]],
    losses: tuple[float, float],
    command: str,
) -> str:
    """A section for benchmarks/RESULTS.md; its last line is ``ratio: R``."""
    import scipy
    import transformers

    device = torch.cuda.get_device_name() if torch.device(config.device).type == "cuda" else cpu_name()
    titles = {
        "vlp": "vlp `HungarianMatcher` + `SetCriterion`",
        "transformers": "transformers `ForObjectDetectionLoss` (DETR)",
    }
    lines = [
        f"`{command}`",
        "",
        f"Batch {config.batch_size}, {config.queries} queries, {config.num_classes} + 1 classes, "
        f"{config.min_boxes}-{config.max_boxes} boxes per image ({inputs.num_boxes} in the batch), "
        f"{config.layers} decoder layers all supervised; costs class 1, L1 5, GIoU 2; losses CE "
        f"(no-object 0.1) + 5 L1 + 2 GIoU; fp32; one step = matching + loss + backward; median of "
        f"{config.steps} interleaved steps per side after {config.warmup} warm-up; torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, transformers {transformers.__version__}, "
        f"scipy {scipy.__version__}, {device}.",
        "",
        "| loss | median ms / batch | quartiles (ms) | total loss |",
        "|---|---|---|---|",
    ]
    for (name, values), loss in zip(times.items(), losses):
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        lines.append(
            f"| {titles[name]} | {1000 * statistics.median(values):.2f} | "
            f"{1000 * quartiles[0]:.2f}-{1000 * quartiles[2]:.2f} | {loss:.6f} |"
        )
    ratio = statistics.median(times["transformers"]) / statistics.median(times["vlp"])
    lines += ["", f"ratio: {ratio:.2f}"]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Parse the options, check both sides agree, time them, print the table and ``ratio: R`` last."""
    config, args = parse_options("detection-loss", DetectionLossConfig, __doc__, argv, set_threads=True)
    inputs = make_inputs(config)
    losses = compare_losses(config, inputs)
    if abs(losses[0] - losses[1]) > 1e-4 * max(1.0, abs(losses[1])):
        raise RuntimeError(
            f"bench detection-loss: vlp's loss {losses[0]} differs from transformers' {losses[1]} "
            "on the same inputs; the timings would not compare the same computation"
        )
    times = time_steps(config, inputs)
    publish(markdown(config, inputs, times, losses, command_line("detection-loss", argv)), args.out)
