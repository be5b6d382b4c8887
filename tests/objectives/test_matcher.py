"""Hungarian matcher: the optimum on hand-made costs, agreement with brute force on random images (counts
0 to 5, more targets than queries too), DETR's cost per image, layers matched separately, bad input named."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou

from vlp.batch import Targets
from vlp.objectives.matcher import HungarianMatcher, assign, box_giou, pad_targets


def random_boxes(count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """cxcywh boxes well inside the unit square."""
    centres = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centres, sizes], 1)


def make_targets(count: int, num_classes: int, num_attributes: int = 0) -> Targets:
    return Targets(
        random_boxes(count),
        torch.randint(0, num_classes, (count,)),
        torch.zeros(count, num_attributes),
    )


def detr_cost(
    logits: torch.Tensor, boxes: torch.Tensor, target: Targets, weights=(1.0, 5.0, 2.0)
) -> torch.Tensor:
    """The cost of one image as DETR writes it, with torchvision's pairwise GIoU: ``[Q, M]``."""
    prob = logits.softmax(-1)[:, target.labels]
    l1 = torch.cdist(boxes, target.boxes, p=1)
    giou = generalized_box_iou(
        box_convert(boxes, "cxcywh", "xyxy"), box_convert(target.boxes, "cxcywh", "xyxy")
    )
    return -weights[0] * prob + weights[1] * l1 - weights[2] * giou


def brute_force_minimum(cost: torch.Tensor) -> float:
    """Smallest total over every one-to-one assignment of min(Q, M) pairs."""
    queries, targets = cost.shape
    if queries >= targets:
        return min(
            sum(cost[q, t].item() for t, q in enumerate(chosen))
            for chosen in itertools.permutations(range(queries), targets)
        )
    return min(
        sum(cost[q, t].item() for q, t in enumerate(chosen))
        for chosen in itertools.permutations(range(targets), queries)
    )


def test_box_giou_broadcasts_to_torchvisions_pairwise_giou() -> None:
    a = box_convert(random_boxes(7), "cxcywh", "xyxy")
    b = box_convert(random_boxes(5), "cxcywh", "xyxy")
    expected = generalized_box_iou(a, b)
    torch.testing.assert_close(box_giou(a[:, None, :], b[None, :, :]), expected)
    torch.testing.assert_close(box_giou(a[:5], b), expected[:5].diagonal())  # element by element
    assert box_giou(a, a).eq(1).all()  # exactly one for identical boxes
    far = torch.tensor([[0.0, 0.0, 0.1, 0.1]]), torch.tensor([[0.9, 0.9, 1.0, 1.0]])
    assert box_giou(*far).item() == pytest.approx(0.02 / 1.0 - 1.0)  # IoU 0, hull 1, union 0.02


@pytest.mark.parametrize(
    ("cost", "queries", "targets"),
    [
        # greedy by row takes (0, 0) = 1 and is left with 100; the optimum pays 2 + 2
        ([[1.0, 2.0], [2.0, 100.0]], [0, 1], [1, 0]),
        # four queries, two targets: query 2 is best for target 0, query 1 for target 1 (2.4 in total)
        ([[5.0, 9.0], [1.0, 1.5], [0.9, 8.0], [7.0, 7.0]], [1, 2], [1, 0]),
        # fewer queries than targets: each query takes its own cheapest target
        ([[1.0, 5.0, 2.0], [4.0, 1.0, 3.0]], [0, 1], [0, 1]),
        # ties between queries 0 and 1 for target 0 are broken by target 1, which only query 0 wants
        ([[1.0, 0.0], [1.0, 50.0], [9.0, 60.0]], [0, 1], [1, 0]),
    ],
)
def test_assign_finds_the_hand_made_optimum(
    cost: list[list[float]], queries: list[int], targets: list[int]
) -> None:
    ((rows, cols),) = assign(torch.tensor([cost]), [len(cost[0])])
    assert rows.tolist() == queries and cols.tolist() == targets
    assert rows.dtype == cols.dtype == torch.int64


def test_assign_ignores_the_padded_columns_of_each_block() -> None:
    cost = torch.tensor(
        [[[3.0, 1.0, -100.0], [1.0, 3.0, -100.0]], [[0.0, -100.0, -100.0], [5.0, -100.0, -100.0]]]
    )
    (rows0, cols0), (rows1, cols1), (rows2, cols2) = assign(torch.cat([cost, cost[:1]]), [2, 1, 0])
    assert (rows0.tolist(), cols0.tolist()) == ([0, 1], [1, 0])
    assert (rows1.tolist(), cols1.tolist()) == ([0], [0])
    assert rows2.numel() == cols2.numel() == 0


def test_assign_checks_the_block_count() -> None:
    with pytest.raises(ValueError, match="counts"):
        assign(torch.zeros(2, 3, 1), [1])


def test_matcher_recovers_a_known_permutation_of_perfect_predictions() -> None:
    num_classes, queries = 5, 6
    target = make_targets(4, num_classes)
    slots = torch.tensor([4, 0, 5, 2])  # target j is predicted exactly by query slots[j]
    logits = torch.randn(1, queries, num_classes + 1)
    boxes = torch.rand(1, queries, 4) * 0.2 + 0.4
    boxes[0, slots] = target.boxes
    logits[0, slots, target.labels] = 10.0
    ((rows, cols),) = HungarianMatcher()(logits, boxes, [target])
    assert rows.tolist() == sorted(slots.tolist())
    assert dict(zip(rows.tolist(), cols.tolist())) == {s: j for j, s in enumerate(slots.tolist())}


@pytest.mark.parametrize("weights", [(1.0, 5.0, 2.0), (2.0, 0.0, 1.0), (0.0, 1.0, 0.0)])
def test_matcher_agrees_with_brute_force_on_random_images(weights: tuple[float, float, float]) -> None:
    num_classes, queries = 4, 5
    counts = [0, 1, 3, 5, 2, 4]
    targets = [make_targets(m, num_classes) for m in counts]
    logits = torch.randn(len(counts), queries, num_classes + 1) * 2
    boxes = torch.sigmoid(torch.randn(len(counts), queries, 4))
    matcher = HungarianMatcher(*weights)
    assignments = matcher(logits, boxes, targets)
    assert len(assignments) == len(counts)
    for image, ((rows, cols), target) in enumerate(zip(assignments, targets)):
        cost = detr_cost(logits[image], boxes[image], target, weights)
        assert len(rows) == len(cols) == min(queries, len(target.labels))
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        assert rows.tolist() == sorted(rows.tolist())
        if len(rows):
            assert cost[rows, cols].sum().item() == pytest.approx(brute_force_minimum(cost), abs=1e-5)


def test_cost_matrix_is_detrs_cost_on_each_images_block() -> None:
    num_classes = 3
    targets = [make_targets(m, num_classes) for m in (2, 0, 4)]
    logits, boxes = torch.randn(2, 3, 6, num_classes + 1), torch.rand(2, 3, 6, 4) * 0.5 + 0.25
    cost = HungarianMatcher().cost_matrix(logits, boxes, pad_targets(targets))
    assert cost.shape == (2 * 3, 6, 4)
    for layer, image in itertools.product(range(2), range(3)):
        count = len(targets[image].labels)
        expected = detr_cost(logits[layer, image], boxes[layer, image], targets[image])
        torch.testing.assert_close(cost[layer * 3 + image, :, :count], expected)


def test_each_decoder_layer_is_matched_on_its_own() -> None:
    num_classes = 3
    targets = [make_targets(m, num_classes) for m in (3, 1)]
    logits, boxes = torch.randn(3, 2, 5, num_classes + 1), torch.rand(3, 2, 5, 4) * 0.5 + 0.25
    matcher = HungarianMatcher()
    together = matcher(logits, boxes, targets)
    assert len(together) == 3 * 2
    for layer in range(3):
        alone = matcher(logits[layer], boxes[layer], targets)
        for image in range(2):
            for got, want in zip(together[layer * 2 + image], alone[image]):
                assert torch.equal(got, want)


def test_no_targets_anywhere_gives_empty_assignments() -> None:
    targets = [make_targets(0, 3), make_targets(0, 3)]
    assignments = HungarianMatcher()(torch.randn(2, 2, 4, 4), torch.rand(2, 2, 4, 4), targets)
    assert len(assignments) == 4
    assert all(q.numel() == t.numel() == 0 for q, t in assignments)


def test_bad_input_is_named() -> None:
    matcher = HungarianMatcher()
    logits, boxes = torch.randn(2, 4, 4), torch.rand(2, 4, 4) * 0.5 + 0.25
    good = make_targets(2, 3)
    bad_label = Targets(random_boxes(2), torch.tensor([1, 3]), torch.zeros(2, 0))  # 3 is "no object"
    with pytest.raises(ValueError, match=r"targets\[1\]\.labels has values outside \[0, 3\)"):
        matcher(logits, boxes, [good, bad_label])
    negative = Targets(torch.tensor([[0.5, 0.5, -0.1, 0.2]]), torch.tensor([0]), torch.zeros(1, 0))
    with pytest.raises(ValueError, match=r"targets\[0\]\.boxes must be finite"):
        matcher(logits, boxes, [negative, good])
    nan_boxes = boxes.clone()
    nan_boxes[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="predicted boxes"):
        matcher(logits, nan_boxes, [good, good])
    with pytest.raises(ValueError, match=r"targets\[0\]\.boxes must be a float \[M, 4\]"):
        matcher(logits, boxes, [Targets(torch.rand(2, 3), torch.tensor([0, 1]), torch.zeros(2, 0)), good])
    with pytest.raises(ValueError, match=r"targets\[1\]\.labels must be an integer \[M\]"):
        matcher(logits, boxes, [good, Targets(random_boxes(2), torch.tensor([0.0, 1.0]), torch.zeros(2, 0))])
    with pytest.raises(ValueError, match="targets has 1"):
        matcher(logits, boxes, [good])
    with pytest.raises(ValueError, match="boxes must be"):
        matcher(logits, boxes[..., :2], [good, good])
    with pytest.raises(ValueError, match="not all 0"):
        HungarianMatcher(0, 0, 0)
