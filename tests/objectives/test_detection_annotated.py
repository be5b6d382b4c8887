"""Detection supervises the images whose objects are annotated (``Batch.objects_annotated``) and only
those: a mixed batch costs what its annotated images cost alone, a batch with none costs zero with a
(zero) gradient for every parameter, ``objects: []`` still teaches "no object", all-annotated batches
take the unchanged path, processes with and without annotated images stay in step, and the mAP of the
pre-training and detection tasks scores the annotated images only."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_detection import NUM_CLASSES, make_targets

from vlp.batch import Batch, Targets
from vlp.models.e2e_vlp.model import ObjectQueryOutput
from vlp.models.layers.heads import DetectionHead
from vlp.models.outputs import DecoderOutput, DetectionPredictions
from vlp.objectives import DetectionObjective
from vlp.objectives.base import ObjectiveOutput
from vlp.objectives.detection import SetCriterion
from vlp.objectives.matcher import HungarianMatcher

sys.path.insert(0, str(Path(__file__).parents[1] / "tasks"))
import e2e_parts as parts

ATTRIBUTES = 3
FLAGS = [True, False, True, False]  # images 1 and 3: no objects list in their json


def unannotated(num_attributes: int = ATTRIBUTES) -> Targets:
    """What the decoder gives a sample without ``objects``: empty targets (flagged not annotated)."""
    return make_targets(0, num_attributes)


def mixed_targets() -> list[Targets]:
    return [make_targets(3, ATTRIBUTES), unannotated(), make_targets(2, ATTRIBUTES), unannotated()]


def random_predictions(layers: int, images: int, queries: int = 6) -> DetectionPredictions:
    return DetectionPredictions(
        torch.randn(layers, images, queries, NUM_CLASSES + 1),
        torch.rand(layers, images, queries, 4) * 0.5 + 0.25,
        torch.randn(layers, images, queries, ATTRIBUTES),
    )


def criterion_of(class_loss: str) -> SetCriterion:
    if class_loss == "focal":
        return SetCriterion(NUM_CLASSES, HungarianMatcher(scores="sigmoid"), class_loss="focal")
    return SetCriterion(NUM_CLASSES, attribute_weight=0.5)


def assert_same_output(first: ObjectiveOutput, second: ObjectiveOutput) -> None:
    assert torch.equal(first.loss, second.loss), (first.loss, second.loss)
    assert first.logs.keys() == second.logs.keys()
    for key in first.logs:
        assert torch.equal(torch.as_tensor(first.logs[key]), torch.as_tensor(second.logs[key])), key


@pytest.mark.parametrize("class_loss", ["ce", "focal"])
def test_a_mixed_batch_costs_exactly_what_its_annotated_images_cost_alone(class_loss: str) -> None:
    torch.manual_seed(0)
    targets = mixed_targets()
    predictions = random_predictions(layers=3, images=4)
    criterion = criterion_of(class_loss)
    mixed = criterion(predictions, targets, FLAGS)
    alone = criterion(
        DetectionPredictions(
            predictions.logits[:, [0, 2]],
            predictions.boxes[:, [0, 2]],
            predictions.attribute_logits[:, [0, 2]],
        ),
        [targets[0], targets[2]],
    )
    assert_same_output(mixed, alone)  # the same values through the same operations: bit for bit
    # read as images with no object, the unannotated images would add "no object" to the class loss
    assert not torch.equal(criterion(predictions, targets).loss, mixed.loss)


def test_what_unannotated_images_predict_neither_changes_the_loss_nor_gets_a_gradient() -> None:
    torch.manual_seed(1)
    objective = DetectionObjective(DetectionHead(16, NUM_CLASSES, ATTRIBUTES), attribute_weight=1.0)
    batch = Batch(keys=list("abcd"), targets=mixed_targets(), objects_annotated=FLAGS)
    states = torch.randn(2, 4, 5, 16, requires_grad=True)
    other = states.detach().clone()
    other[:, [1, 3]] = torch.randn(2, 2, 5, 16)  # what the unannotated images' queries hold is irrelevant
    output = objective(DecoderOutput(states), batch)
    assert_same_output(output, objective(DecoderOutput(other), batch))
    output.loss.backward()
    assert states.grad[:, [1, 3]].abs().sum() == 0 and states.grad[:, [0, 2]].abs().sum() > 0


def test_query_groups_repeat_each_images_flag() -> None:
    torch.manual_seed(2)
    objective = DetectionObjective(DetectionHead(16, NUM_CLASSES, ATTRIBUTES))
    targets = [make_targets(2, ATTRIBUTES), unannotated()]
    states = torch.randn(2, 2, 3 * 4, 16)  # 3 groups of 4 queries
    batch = Batch(keys=["a", "b"], targets=targets, objects_annotated=[True, False])
    grouped = objective(ObjectQueryOutput(states, groups=3), batch).loss
    # the annotated image alone, its 3 groups as images of their own (the same head outputs)
    predictions = objective.predict(DecoderOutput(states))
    alone = DetectionPredictions(
        *(
            tensor[:, :1].reshape(2, 3, 4, -1)
            for tensor in (predictions.logits, predictions.boxes, predictions.attribute_logits)
        )
    )
    assert torch.equal(grouped, objective.criterion(alone, [targets[0]] * 3).loss)


@pytest.mark.parametrize("aux_loss", [True, False])
def test_a_batch_without_annotated_images_costs_zero_with_a_zero_gradient_everywhere(aux_loss: bool) -> None:
    torch.manual_seed(3)
    objective = DetectionObjective(DetectionHead(16, NUM_CLASSES, ATTRIBUTES), aux_loss=aux_loss)
    states = torch.randn(3, 2, 5, 16, requires_grad=True)
    annotated = objective(
        DecoderOutput(states), Batch(keys=["a", "b"], targets=[make_targets(2, ATTRIBUTES)] * 2)
    )
    batch = Batch(keys=["a", "b"], targets=[unannotated(), unannotated()], objects_annotated=[False, False])
    output = objective(DecoderOutput(states), batch)
    assert output.loss.item() == 0.0 and output.loss.requires_grad
    assert output.logs.keys() == annotated.logs.keys()  # every process logs the same keys every step
    assert all(float(value) == 0.0 for value in output.logs.values())
    output.loss.backward()
    for name, parameter in objective.named_parameters():  # in the graph, as DDP needs: a zero gradient
        assert parameter.grad is not None and not parameter.grad.any(), name
    assert states.grad is not None and not states.grad.any()


def test_an_image_annotated_with_no_objects_still_teaches_no_object() -> None:
    torch.manual_seed(4)
    targets = [make_targets(2, ATTRIBUTES), make_targets(0, ATTRIBUTES)]  # the second: "objects": []
    predictions = random_predictions(layers=1, images=2)
    criterion = SetCriterion(NUM_CLASSES)
    annotated = criterion(predictions, targets, [True, True])
    assert_same_output(annotated, criterion(predictions, targets))
    assert not torch.equal(annotated.loss, criterion(predictions, targets, [True, False]).loss)
    # alone, an empty image's class loss is every query's -log p(no object)
    alone = criterion.losses(
        DetectionPredictions(
            predictions.logits[:, 1:], predictions.boxes[:, 1:], predictions.attribute_logits[:, 1:]
        ),
        targets[1:],
    )
    expected = -predictions.logits[0, 1].log_softmax(-1)[:, NUM_CLASSES].mean()
    torch.testing.assert_close(alone.ce[0], expected)  # mean vs weighted sum: summation order differs


@pytest.mark.parametrize("class_loss", ["ce", "focal"])
def test_an_all_annotated_batch_takes_the_unflagged_path(class_loss: str) -> None:
    """The shapes data annotate every image: flagging them all changes nothing, bit for bit (losses,
    figures and gradients)."""
    torch.manual_seed(5)
    matcher = HungarianMatcher(scores="sigmoid") if class_loss == "focal" else None
    head = DetectionHead(16, NUM_CLASSES, ATTRIBUTES)
    objective = DetectionObjective(head, matcher, class_loss=class_loss, attribute_weight=1.0)
    targets = [make_targets(3, ATTRIBUTES), make_targets(0, ATTRIBUTES), make_targets(4, ATTRIBUTES)]
    states = torch.randn(3, 3, 8, 16)
    results = []
    for flags in (None, [True, True, True]):
        objective.zero_grad()
        output = objective(
            DecoderOutput(states), Batch(keys=list("abc"), targets=targets, objects_annotated=flags)
        )
        output.loss.backward()
        results.append((output, [parameter.grad.clone() for parameter in objective.parameters()]))
    assert_same_output(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_flags_must_be_one_per_image() -> None:
    objective = DetectionObjective(DetectionHead(16, NUM_CLASSES))
    batch = Batch(keys=["a", "b"], targets=[make_targets(1), make_targets(1)], objects_annotated=[True])
    with pytest.raises(ValueError, match="objects_annotated has 1 flags for 2 images"):
        objective(DecoderOutput(torch.randn(1, 2, 4, 16)), batch)
    with pytest.raises(ValueError, match=r"targets has 2 images but predictions\.logits has 3"):
        SetCriterion(NUM_CLASSES)(random_predictions(1, 3), [make_targets(1), unannotated()], [True, False])


def _unannotated_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)
        objective = DetectionObjective(DetectionHead(16, NUM_CLASSES))
        states = torch.randn(1, 2, 4, 16, requires_grad=True)
        if rank == 0:  # 3 boxes on rank 0, none annotated on rank 1: each normalises by 1.5
            batch = Batch(
                keys=["a", "b"], targets=[make_targets(3), unannotated(0)], objects_annotated=[True, False]
            )
        else:
            batch = Batch(keys=["a", "b"], targets=[unannotated(0)] * 2, objects_annotated=[False, False])
        output = objective(DecoderOutput(states), batch)
        output.loss.backward()
        second = objective(DecoderOutput(states), batch).loss  # the processes are still in step
    finally:
        dist.destroy_process_group()
    predictions = objective.predict(DecoderOutput(states.detach()))
    first_image = DetectionPredictions(predictions.logits[:, :1], predictions.boxes[:, :1])
    alone = SetCriterion(NUM_CLASSES).losses(first_image, [batch.targets[0]])  # no group: its own boxes
    torch.save(
        {"loss": output.loss.detach(), "second": second.detach(), "l1": output.logs["det_l1"],
         "l1_alone": alone.l1[-1], "grads": [p.grad for p in objective.parameters()]},
        Path(out_dir) / f"{rank}.pt",
    )  # fmt: skip


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_process_without_annotated_images_joins_the_box_count(tmp_path: Path) -> None:
    init_file = str(tmp_path / "init")
    mp.spawn(_unannotated_rank_worker, args=(init_file, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert rank1["loss"].item() == rank1["second"].item() == 0.0
    assert all(grad is not None and not grad.any() for grad in rank1["grads"])
    assert rank0["loss"].item() > 0 and torch.equal(rank0["loss"], rank0["second"])
    # rank 0's box loss is normalised by the mean count 3 / 2 = 1.5, not by its own 3 boxes
    torch.testing.assert_close(rank0["l1"], rank0["l1_alone"] * 3 / 1.5)  # one division vs two


# ----------------------------------------------------------------------------------------------- mAP


def flagged(batch: Batch, flags: list[bool]) -> Batch:
    """``batch`` with the images whose flag is False not annotated (their targets empty, as decoded)."""
    targets = [
        t if flag else Targets(t.boxes[:0], t.labels[:0], t.attributes[:0])
        for t, flag in zip(batch.targets, flags)
    ]
    return Batch(**{**vars(batch), "targets": targets, "objects_annotated": flags})


METRIC_STATES = (
    "detection_box",
    "detection_scores",
    "detection_labels",
    "groundtruth_box",
    "groundtruth_labels",
)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "task_of", [parts.pretrain_task, parts.detection_task], ids=["pretrain", "detection"]
)
def test_map_scores_the_annotated_images_only(task_of: Callable[[], Any]) -> None:
    task = task_of().eval()
    batch = parts.e2e_batches(1, size=4)[0]
    with torch.no_grad():
        task.evaluate(batch, "val")  # every image annotated
        every = {name: list(getattr(task.val_map, name)) for name in METRIC_STATES}
        task.val_map.reset()
        task.evaluate(flagged(batch, FLAGS), "val")
    for name in METRIC_STATES:  # images 0 and 2 as scored before; 1 and 3 neither found nor missed
        kept = getattr(task.val_map, name)
        assert len(kept) == 2 and all(
            torch.equal(a, b) for a, b in zip(kept, [every[name][0], every[name][2]])
        ), name
    assert 0.0 <= float(task.val_map.compute()["map"]) <= 1.0
    # no annotated image: nothing to score, yet the metric is updated (under DDP every process then
    # computes it, a collective) and reports COCO's -1 for no ground truth
    task.val_map.reset()
    with torch.no_grad():
        task.evaluate(flagged(batch, [False] * 4), "val")
    assert task.val_map.update_called and task.val_map.groundtruth_labels == []
    assert float(task.val_map.compute()["map"]) == -1.0
