"""Set criterion and detection objective: perfect predictions cost nothing, empty images are all
"no object", the no-object weight and the box normalisation follow DETR, every layer is matched and
supervised on its own, gradients reach the head, and a tiny head learns a fixed batch. The focal class
loss matches a hand computation and reads no no-object column; anchored boxes are offsets of their
reference boxes, which the box losses' gradient reaches."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vlp.batch import Batch, Targets
from vlp.models.e2e_vlp.model import ObjectQueryOutput
from vlp.models.layers.heads import DetectionHead
from vlp.models.outputs import DecoderOutput, DetectionPredictions
from vlp.objectives import DetectionObjective
from vlp.objectives.detection import SetCriterion, num_boxes_across_processes
from vlp.objectives.matcher import HungarianMatcher

NUM_CLASSES = 4


def random_boxes(count: int) -> torch.Tensor:
    return torch.cat([torch.rand(count, 2) * 0.6 + 0.2, torch.rand(count, 2) * 0.3 + 0.05], 1)


def make_targets(count: int, num_attributes: int = 0) -> Targets:
    attributes = (torch.rand(count, num_attributes) < 0.3).float()
    return Targets(random_boxes(count), torch.randint(0, NUM_CLASSES, (count,)), attributes)


def perfect_predictions(
    targets: list[Targets], queries: int = 6, layers: int = 1, confidence: float = 30.0
) -> tuple[DetectionPredictions, list[torch.Tensor]]:
    """Every layer predicts every target exactly (from query slots chosen per image and layer) and
    "no object" everywhere else, with ``confidence`` as the winning logit."""
    logits = torch.zeros(layers, len(targets), queries, NUM_CLASSES + 1)
    logits[..., NUM_CLASSES] = confidence
    boxes = torch.rand(layers, len(targets), queries, 4) * 0.2 + 0.4
    slots = []
    for layer in range(layers):
        for image, target in enumerate(targets):
            slot = torch.randperm(queries)[: len(target.labels)]
            logits[layer, image, slot] = 0.0
            logits[layer, image, slot, target.labels] = confidence
            boxes[layer, image, slot] = target.boxes
            slots.append(slot)
    return DetectionPredictions(logits, boxes), slots


def test_perfect_predictions_cost_nothing() -> None:
    targets = [make_targets(3), make_targets(0), make_targets(5)]
    predictions, _ = perfect_predictions(targets, layers=2)
    losses = SetCriterion(NUM_CLASSES).losses(predictions, targets)
    assert losses.l1.tolist() == [0.0, 0.0] and losses.giou.tolist() == [0.0, 0.0]
    assert losses.ce.max().item() < 1e-10
    assert losses.class_accuracy.item() == 1.0 and losses.cardinality_error.item() == 0.0
    assert losses.attribute is None


def test_images_without_targets_make_every_query_no_object() -> None:
    targets = [make_targets(0), make_targets(0)]
    logits = torch.randn(1, 2, 5, NUM_CLASSES + 1)
    boxes = torch.rand(1, 2, 5, 4)
    criterion = SetCriterion(NUM_CLASSES)
    losses = criterion.losses(DetectionPredictions(logits, boxes), targets)
    expected = -F.log_softmax(logits, -1)[..., NUM_CLASSES].mean()  # all weights equal: a plain mean
    torch.testing.assert_close(losses.ce[0], expected)
    assert losses.l1.item() == losses.giou.item() == 0.0
    predicted = (logits[0].argmax(-1) != NUM_CLASSES).sum(-1).float()
    torch.testing.assert_close(losses.cardinality_error, predicted.mean())
    confident = logits.clone()
    confident[..., NUM_CLASSES] = 30.0
    assert criterion.losses(DetectionPredictions(confident, boxes), targets).ce.item() < 1e-10


@pytest.mark.parametrize("eos_coef", [0.1, 1.0, 0.0])
def test_no_object_weight_is_the_relative_weight_of_unmatched_queries(eos_coef: float) -> None:
    targets = [make_targets(2), make_targets(1)]
    logits, boxes = torch.randn(1, 2, 5, NUM_CLASSES + 1), torch.rand(1, 2, 5, 4) * 0.5 + 0.25
    criterion = SetCriterion(NUM_CLASSES, eos_coef=eos_coef)
    losses = criterion.losses(DetectionPredictions(logits, boxes), targets)
    nll = -F.log_softmax(logits[0], -1)
    matched_sum, unmatched_sum, matched = 0.0, 0.0, 0
    for image, (rows, cols) in enumerate(HungarianMatcher()(logits[0], boxes[0], targets)):
        labels = torch.full((5,), NUM_CLASSES)
        labels[rows] = targets[image].labels[cols]
        per_query = nll[image].gather(1, labels[:, None])[:, 0]
        is_matched = labels != NUM_CLASSES
        matched_sum += per_query[is_matched].sum().item()
        unmatched_sum += per_query[~is_matched].sum().item()
        matched += int(is_matched.sum())
    expected = (matched_sum + eos_coef * unmatched_sum) / (matched + eos_coef * (10 - matched))
    assert losses.ce.item() == pytest.approx(expected, rel=1e-5)


def test_box_losses_are_normalised_by_the_number_of_boxes_not_images() -> None:
    targets = [make_targets(2), make_targets(1)]
    predictions, slots = perfect_predictions(targets, queries=4)
    offsets = [torch.tensor([0.01, 0.02]), torch.tensor([0.06])]
    for image, (slot, offset) in enumerate(zip(slots, offsets)):
        predictions.boxes[0, image, slot, 0] += offset  # shift the centre x: L1 grows by the offset
    losses = SetCriterion(NUM_CLASSES).losses(predictions, targets)
    assert losses.l1.item() == pytest.approx((0.01 + 0.02 + 0.06) / 3, rel=1e-4)
    giou = losses.giou.item()
    assert 0 < giou < 1
    doubled = SetCriterion(NUM_CLASSES).losses(
        DetectionPredictions(predictions.logits.repeat(1, 2, 1, 1), predictions.boxes.repeat(1, 2, 1, 1)),
        targets * 2,
    )
    assert doubled.l1.item() == pytest.approx(losses.l1.item(), rel=1e-5)  # twice the boxes, same mean
    assert doubled.giou.item() == pytest.approx(giou, rel=1e-5)


def test_num_boxes_without_a_process_group_is_the_local_count_at_least_one() -> None:
    assert num_boxes_across_processes(7, torch.device("cpu")) == 7.0
    assert num_boxes_across_processes(0, torch.device("cpu")) == 1.0


def _normalisation_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)
        count = 3 if rank == 0 else 0  # 3 boxes over 2 processes: each normalises by 1.5
        targets = [make_targets(count)]
        predictions, slots = perfect_predictions(targets, queries=4)
        predictions.boxes[0, 0, slots[0], 0] += 0.01
        losses = SetCriterion(NUM_CLASSES).losses(predictions, targets)
        torch.save({"l1": losses.l1, "num_boxes": num_boxes_across_processes(count, torch.device("cpu"))},
                   Path(out_dir) / f"{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_box_normaliser_is_the_mean_count_over_processes(tmp_path: Path) -> None:
    init_file = str(tmp_path / "init")
    mp.spawn(_normalisation_worker, args=(init_file, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["num_boxes"].item() == rank1["num_boxes"].item() == 1.5
    assert rank0["l1"].item() == pytest.approx(3 * 0.01 / 1.5, rel=1e-4)
    assert rank1["l1"].item() == 0.0


def test_auxiliary_losses_are_each_layer_alone_and_summed() -> None:
    targets = [make_targets(2, 3), make_targets(4, 3), make_targets(0, 3)]
    layers = 3
    predictions = DetectionPredictions(
        torch.randn(layers, 3, 6, NUM_CLASSES + 1),
        torch.rand(layers, 3, 6, 4) * 0.5 + 0.25,
        torch.randn(layers, 3, 6, 3),
    )
    criterion = SetCriterion(NUM_CLASSES, attribute_weight=0.5)
    together = criterion.losses(predictions, targets)
    single = SetCriterion(NUM_CLASSES, attribute_weight=0.5, aux_loss=False)
    for layer in range(layers):
        alone = single.losses(
            DetectionPredictions(
                predictions.logits[: layer + 1],
                predictions.boxes[: layer + 1],
                predictions.attribute_logits[: layer + 1],
            ),
            targets,
        )
        for name in ("ce", "l1", "giou", "attribute"):
            torch.testing.assert_close(getattr(together, name)[layer], getattr(alone, name)[0])
    total = criterion(predictions, targets)
    per_layer = together.ce + 5 * together.l1 + 2 * together.giou + 0.5 * together.attribute
    torch.testing.assert_close(total.loss, per_layer.sum())
    torch.testing.assert_close(total.logs["det_aux_loss"], per_layer[:-1].sum())
    last_only = single(predictions, targets)
    torch.testing.assert_close(last_only.loss, per_layer[-1])
    assert "det_aux_loss" not in last_only.logs


def test_layers_are_matched_separately() -> None:
    """Each layer predicts the targets perfectly from different queries: zero box loss on every layer
    only if each layer gets its own assignment."""
    targets = [make_targets(3), make_targets(2)]
    predictions, slots = perfect_predictions(targets, queries=8, layers=3)
    assert not all(torch.equal(slots[0], s) for s in slots[2::2])
    losses = SetCriterion(NUM_CLASSES).losses(predictions, targets)
    assert losses.l1.tolist() == [0.0] * 3 and losses.giou.tolist() == [0.0] * 3


def test_attribute_loss_reads_matched_queries_only() -> None:
    targets = [make_targets(2, 5), make_targets(1, 5)]
    predictions, slots = perfect_predictions(targets, queries=4)
    attribute_logits = torch.randn(1, 2, 4, 5)
    criterion = SetCriterion(NUM_CLASSES)
    losses = criterion.losses(
        DetectionPredictions(predictions.logits, predictions.boxes, attribute_logits), targets
    )
    expected = (
        sum(
            F.binary_cross_entropy_with_logits(
                attribute_logits[0, image, slot], target.attributes, reduction="none"
            )
            .mean(-1)
            .sum()
            for image, (slot, target) in enumerate(zip(slots, targets))
        )
        / 3
    )
    torch.testing.assert_close(losses.attribute[0], expected)
    unmatched = torch.ones(2, 4, dtype=torch.bool)
    for image, slot in enumerate(slots):
        unmatched[image, slot] = False
    changed = attribute_logits.clone()
    changed[0][unmatched] = 100.0
    again = criterion.losses(DetectionPredictions(predictions.logits, predictions.boxes, changed), targets)
    torch.testing.assert_close(again.attribute, losses.attribute)
    with pytest.raises(ValueError, match="attribute_logits"):
        criterion.losses(
            DetectionPredictions(predictions.logits, predictions.boxes, changed[..., :3]), targets
        )


def test_class_accuracy_and_cardinality_of_the_last_layer() -> None:
    targets = [make_targets(2), make_targets(3)]
    predictions, slots = perfect_predictions(targets, queries=6, layers=2)
    logits = predictions.logits
    wrong = (targets[1].labels[0] + 1) % NUM_CLASSES  # one matched query of the last layer says another class
    logits[1, 1, slots[3][0]] = 0.0
    logits[1, 1, slots[3][0], wrong] = 30.0
    spare = next(q for q in range(6) if q not in slots[2].tolist())  # an unmatched query claims an object
    logits[1, 0, spare] = 0.0
    logits[1, 0, spare, 0] = 30.0
    losses = SetCriterion(NUM_CLASSES).losses(predictions, targets)
    assert losses.class_accuracy.item() == pytest.approx(4 / 5)
    assert losses.cardinality_error.item() == pytest.approx((1 + 0) / 2)


def make_objective(num_attributes: int = 3, dim: int = 16) -> DetectionObjective:
    return DetectionObjective(DetectionHead(dim, NUM_CLASSES, num_attributes), attribute_weight=1.0)


def test_gradients_reach_every_head_parameter() -> None:
    objective = make_objective()
    states = torch.randn(2, 2, 5, 16, requires_grad=True)
    batch = Batch(keys=["a", "b"], targets=[make_targets(2, 3), make_targets(3, 3)])
    output = objective(DecoderOutput(states), batch)
    output.loss.backward()
    for name, parameter in objective.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert states.grad is not None and states.grad[0].abs().sum() > 0  # the auxiliary layer too
    assert set(output.logs) == {
        "det_ce", "det_l1", "det_giou", "det_attribute", "det_class_acc", "det_cardinality_error", "det_aux_loss",
    }  # fmt: skip


def test_a_tiny_head_learns_a_fixed_batch() -> None:
    objective = make_objective(num_attributes=3, dim=16)
    states = torch.randn(1, 2, 6, 16)
    batch = Batch(keys=["a", "b"], targets=[make_targets(2, 3), make_targets(3, 3)])
    optimiser = torch.optim.Adam(objective.parameters(), lr=3e-2)
    first = None
    for _ in range(80):
        optimiser.zero_grad()
        output = objective(DecoderOutput(states), batch)
        output.loss.backward()
        optimiser.step()
        first = output.loss.item() if first is None else first
    final = objective(DecoderOutput(states), batch)
    assert final.loss.item() < 0.3 * first
    assert final.logs["det_class_acc"].item() == 1.0
    assert final.logs["det_l1"].item() < 0.1


def test_objective_checks_its_inputs() -> None:
    objective = make_objective()
    targets = [make_targets(1, 3)]
    with pytest.raises(ValueError, match=r"batch\.targets"):
        objective(DecoderOutput(torch.randn(1, 1, 4, 16)), Batch(keys=["a"]))
    with pytest.raises(ValueError, match=r"outputs\.query_states"):
        objective(DecoderOutput(torch.randn(1, 4, 16)), Batch(keys=["a"], targets=targets))
    with pytest.raises(ValueError, match=r"outputs\.query_states"):
        objective(DecoderOutput(torch.randn(1, 1, 4, 8)), Batch(keys=["a"], targets=targets))
    with pytest.raises(ValueError, match="targets has 1 images"):
        objective(DecoderOutput(torch.randn(1, 2, 4, 16)), Batch(keys=["a", "b"], targets=targets))
    with pytest.raises(ValueError, match=r"targets\[\*\]\.attributes must share one width"):
        objective(
            DecoderOutput(torch.randn(1, 2, 4, 16)),
            Batch(keys=["a", "b"], targets=[*targets, make_targets(1, 2)]),
        )
    with pytest.raises(ValueError, match="num_classes"):
        SetCriterion(NUM_CLASSES + 1).losses(
            DetectionPredictions(torch.randn(1, 1, 4, 5), torch.rand(1, 1, 4, 4)), targets
        )
    with pytest.raises(ValueError, match="eos_coef"):
        SetCriterion(NUM_CLASSES, eos_coef=-0.1)


def test_aux_loss_off_runs_the_head_on_the_last_layer_only() -> None:
    objective = DetectionObjective(DetectionHead(16, NUM_CLASSES), aux_loss=False)
    states = torch.randn(3, 1, 4, 16, requires_grad=True)
    objective(DecoderOutput(states), Batch(keys=["a"], targets=[make_targets(2)])).loss.backward()
    assert states.grad[:2].abs().sum() == 0 and states.grad[2].abs().sum() > 0


def test_no_object_weight_is_not_saved_in_the_state_dict() -> None:
    assert not any("class_weight" in key for key in make_objective().state_dict())


# ------------------------------------------------------------------- focal loss and anchored boxes


def sigmoid_matcher() -> HungarianMatcher:
    return HungarianMatcher(scores="sigmoid")


def confident_sigmoid_logits(targets: list[Targets], slots: list[torch.Tensor], queries: int) -> torch.Tensor:
    """Every class off (-30) except each target's class on its slot (+30): ``[1, B, Q, C + 1]``."""
    logits = torch.full((1, len(targets), queries, NUM_CLASSES + 1), -30.0)
    for image, (target, slot) in enumerate(zip(targets, slots)):
        logits[0, image, slot, target.labels] = 30.0
    return logits


def test_focal_loss_of_perfect_predictions_is_zero_and_boxes_cost_nothing() -> None:
    torch.manual_seed(0)
    targets = [make_targets(3), make_targets(0), make_targets(2)]
    predictions, slots = perfect_predictions(targets)
    logits = confident_sigmoid_logits(targets, slots, 6)
    criterion = SetCriterion(NUM_CLASSES, class_loss="focal")
    losses = criterion.losses(DetectionPredictions(logits, predictions.boxes), targets)
    assert losses.l1.item() == 0.0 and losses.giou.item() == 0.0
    assert losses.ce.item() < 1e-10
    assert losses.class_accuracy.item() == 1.0 and losses.cardinality_error.item() == 0.0


def test_focal_loss_matches_a_hand_computation() -> None:
    torch.manual_seed(1)
    targets = [make_targets(2), make_targets(1)]
    predictions, slots = perfect_predictions(targets, queries=4)  # exact boxes: the matching is the slots
    logits = torch.randn(1, 2, 4, NUM_CLASSES + 1)
    alpha, gamma = 0.3, 1.5
    criterion = SetCriterion(NUM_CLASSES, class_loss="focal", focal_alpha=alpha, focal_gamma=gamma)
    criterion.matcher.cost_class = 0.0  # boxes alone decide: the matched queries are the slots
    loss = criterion.losses(DetectionPredictions(logits, predictions.boxes), targets).ce.item()
    expected = 0.0
    for image, (target, slot) in enumerate(zip(targets, slots)):
        wanted = {int(q): int(c) for q, c in zip(slot, target.labels)}
        for query in range(4):
            for cls in range(NUM_CLASSES):  # the no-object column is never read
                p = 1 / (1 + math.exp(-logits[0, image, query, cls].item()))
                if wanted.get(query) == cls:
                    expected += -alpha * (1 - p) ** gamma * math.log(p)
                else:
                    expected += -(1 - alpha) * p**gamma * math.log(1 - p)
    assert loss == pytest.approx(expected / 3, rel=1e-5)  # / 3 target boxes


def test_focal_loss_ignores_the_no_object_column() -> None:
    torch.manual_seed(2)
    targets = [make_targets(2)]
    predictions, _ = perfect_predictions(targets)
    criterion = SetCriterion(NUM_CLASSES, class_loss="focal")
    logits = torch.randn(1, 1, 6, NUM_CLASSES + 1, requires_grad=True)
    criterion.losses(DetectionPredictions(logits, predictions.boxes), targets).ce.sum().backward()
    assert logits.grad[..., -1].abs().max().item() == 0.0
    assert logits.grad[..., :-1].abs().min().item() > 0.0


def test_sigmoid_matcher_prefers_the_query_confident_of_the_target_class() -> None:
    target = Targets(torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([1]), torch.zeros(1, 0))
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)[None]  # two queries on the same box
    logits = torch.full((1, 2, NUM_CLASSES + 1), -3.0)
    logits[0, 0, 0] = 3.0  # query 0: confident of class 0
    logits[0, 1, 1] = 3.0  # query 1: confident of class 1, the target's
    logits[0, 0, -1] = 9.0  # the no-object column does not count against query 0
    (rows, cols) = sigmoid_matcher()(logits, boxes, [target])[0]
    assert rows.tolist() == [1] and cols.tolist() == [0]


def test_a_matcher_of_the_other_scores_is_refused() -> None:
    with pytest.raises(ValueError, match="scores='sigmoid'"):
        SetCriterion(NUM_CLASSES, HungarianMatcher(), class_loss="focal")
    with pytest.raises(ValueError, match="class_loss"):
        SetCriterion(NUM_CLASSES, class_loss="hinge")


def anchored_outputs(
    head: DetectionHead, targets: list[Targets], queries: int = 6, layers: int = 2
) -> tuple[ObjectQueryOutput, list[torch.Tensor]]:
    """Random states and references; each target's slot has its box as the reference box."""
    states = torch.randn(layers, len(targets), queries, head.input_dim)
    boxes = torch.rand(layers, len(targets), queries, 4) * 0.2 + 0.4
    slots = []
    for image, target in enumerate(targets):
        slot = torch.randperm(queries)[: len(target.labels)]
        boxes[:, image, slot] = target.boxes
        slots.append(slot)
    return ObjectQueryOutput(query_states=states, reference_boxes=torch.logit(boxes)), slots


def test_anchored_boxes_are_offsets_of_the_reference_boxes() -> None:
    torch.manual_seed(3)
    head = DetectionHead(16, NUM_CLASSES)
    objective = DetectionObjective(head)
    targets = [make_targets(2), make_targets(3)]
    outputs, _ = anchored_outputs(head, targets)
    offsets = head.bbox_embed(outputs.query_states)
    torch.testing.assert_close(
        objective.predict(outputs).boxes, (outputs.reference_boxes + offsets).sigmoid()
    )
    last = objective.predict(outputs, last_only=True)
    torch.testing.assert_close(last.boxes, objective.predict(outputs).boxes[-1:])
    torch.testing.assert_close(last.logits, head(outputs.query_states[-1:]).logits)
    # a head whose offset is zero predicts the reference boxes: on the targets, the box losses vanish
    torch.nn.init.zeros_(head.bbox_embed[-1].weight)
    torch.nn.init.zeros_(head.bbox_embed[-1].bias)
    losses = objective.criterion.losses(objective.predict(outputs), targets)
    assert losses.l1.abs().max().item() < 1e-6 and losses.giou.abs().max().item() < 1e-6


def test_gradient_of_the_box_losses_reaches_the_reference_boxes() -> None:
    torch.manual_seed(4)
    head = DetectionHead(16, NUM_CLASSES)
    objective = DetectionObjective(head)
    targets = [make_targets(2)]
    outputs, _ = anchored_outputs(head, targets)
    reference = (outputs.reference_boxes + 0.3).requires_grad_(True)  # off the targets
    outputs = ObjectQueryOutput(outputs.query_states, reference)
    objective(outputs, Batch(keys=["0"], targets=targets)).loss.backward()
    assert reference.grad is not None and reference.grad.abs().sum().item() > 0


def test_query_groups_are_each_matched_and_supervised_as_an_image_of_their_own() -> None:
    torch.manual_seed(5)
    head = DetectionHead(16, NUM_CLASSES, num_attributes=2)
    objective = DetectionObjective(head)
    targets = [make_targets(2, 2), make_targets(1, 2)]
    states = torch.randn(2, 2, 3 * 4, 16)  # 3 groups of 4 queries
    grouped = objective(ObjectQueryOutput(states, groups=3), Batch(keys=["a", "b"], targets=targets)).loss
    # the same as 3 copies of each image, one per group, each with the group's 4 queries
    alone = states.view(2, 2, 3, 4, 16).reshape(2, 6, 4, 16)
    copies = [t for t in targets for _ in range(3)]
    expected = objective(DecoderOutput(alone), Batch(keys=list("abcdef"), targets=copies)).loss
    torch.testing.assert_close(grouped, expected)
    # and each group alone is a DETR detector: its loss is what the mean over groups averages
    each = [
        objective(
            DecoderOutput(states[:, :, 4 * g : 4 * g + 4]), Batch(keys=["a", "b"], targets=targets)
        ).loss
        for g in range(3)
    ]
    torch.testing.assert_close(grouped, torch.stack(each).mean())
