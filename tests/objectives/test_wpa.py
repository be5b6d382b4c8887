"""Word-patch alignment: the IPOT plan is a transport plan that reaches the exact optimum, padding carries
no mass, and the loss pulls matching pairs together and pushes mismatched ones apart."""

from __future__ import annotations

import itertools

import pytest
import torch

from vlp.batch import Batch
from vlp.models.embedders.base import VisualTokens
from vlp.models.outputs import FusionOutput
from vlp.objectives.wpa import WPAObjective, alignment_positions, cosine_cost, ipot_plan


def exact_ot(cost: torch.Tensor) -> float:
    """Uniform-mass OT between two sets of equal size is an assignment: brute force over permutations."""
    n = cost.shape[0]
    return min(sum(cost[i, p[i]].item() for i in range(n)) for p in itertools.permutations(range(n))) / n


def test_plan_has_uniform_marginals_and_reaches_the_exact_optimum() -> None:
    torch.manual_seed(0)
    for _ in range(5):
        cost = torch.rand(1, 5, 5, dtype=torch.float64) * 2
        valid = torch.ones(1, 5, dtype=torch.bool)
        plan = ipot_plan(cost, valid, valid, beta=0.5, iterations=200)
        torch.testing.assert_close(
            plan.sum(2), torch.full((1, 5), 0.2, dtype=torch.float64), atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            plan.sum(1), torch.full((1, 5), 0.2, dtype=torch.float64), atol=1e-6, rtol=0
        )
        assert (cost * plan).sum().item() == pytest.approx(exact_ot(cost[0]), abs=1e-3)


def test_unequal_sizes_spread_each_word_over_the_patches() -> None:
    cost = torch.rand(1, 3, 6)
    valid_text, valid_image = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool)
    plan = ipot_plan(cost, valid_text, valid_image)
    torch.testing.assert_close(plan.sum(2), torch.full((1, 3), 1 / 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(plan.sum(1), torch.full((1, 6), 1 / 6), atol=1e-5, rtol=0)


def test_padding_carries_no_mass_and_changes_nothing() -> None:
    cost = torch.rand(1, 4, 5)
    plan = ipot_plan(cost, torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool))
    padded_cost = torch.rand(1, 6, 8)
    padded_cost[:, :4, :5] = cost
    text_valid = torch.tensor([[True] * 4 + [False] * 2])
    image_valid = torch.tensor([[True] * 5 + [False] * 3])
    padded = ipot_plan(padded_cost, text_valid, image_valid)
    assert padded[:, 4:].abs().sum() == 0 and padded[:, :, 5:].abs().sum() == 0
    torch.testing.assert_close(padded[:, :4, :5], plan)


def fusion(text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor | None = None) -> FusionOutput:
    batch, length = text.shape[:2]
    tokens = image.shape[1]
    mask = torch.ones(batch, length, dtype=torch.bool) if text_mask is None else text_mask
    image_mask = torch.ones(batch, tokens, dtype=torch.bool)
    visual = VisualTokens(embeds=image, mask=image_mask, num_prefix=1)
    return FusionOutput(text, image, mask, image_mask, text[:, 0], visual)


def test_alignment_skips_cls_sep_padding_and_the_image_summary_token() -> None:
    text_mask = torch.tensor([[True, True, True, True, False], [True, True, True, False, False]])
    outputs = fusion(torch.randn(2, 5, 4), torch.randn(2, 3, 4), text_mask)
    text_valid, image_valid = alignment_positions(outputs)
    assert text_valid.tolist() == [[False, True, True, False, False], [False, True, False, False, False]]
    assert image_valid.tolist() == [[False, True, True]] * 2


def test_loss_is_matching_minus_mismatched_distance_over_the_batch() -> None:
    torch.manual_seed(1)
    outputs = fusion(torch.randn(4, 6, 8), torch.randn(4, 5, 8))
    labels = torch.tensor([1, 0, 1, 0])
    result = WPAObjective()(outputs, Batch(keys=list("abcd"), itm_labels=labels))
    text_valid, image_valid = alignment_positions(outputs)
    cost = cosine_cost(outputs.text_states, outputs.image_states)
    distance = (cost * ipot_plan(cost, text_valid, image_valid)).sum((1, 2))
    expected = (distance[labels == 1].sum() - distance[labels == 0].sum()) / 4
    torch.testing.assert_close(result.loss, expected)
    torch.testing.assert_close(result.logs["wpa_distance_matching"], distance[labels == 1].mean())


def test_gradient_aligns_words_with_the_patches_of_their_own_image() -> None:
    """A few steps on the WPA loss bring the word states of a matching pair closer to its patches."""
    torch.manual_seed(2)
    text = torch.randn(2, 6, 8, requires_grad=True)
    image = torch.randn(2, 5, 8)
    labels = torch.tensor([1, 0])
    objective = WPAObjective()
    before = objective(fusion(text, image), Batch(keys=["a", "b"], itm_labels=labels)).logs
    optimizer = torch.optim.SGD([text], lr=1.0)
    for _ in range(20):
        optimizer.zero_grad()
        objective(fusion(text, image), Batch(keys=["a", "b"], itm_labels=labels)).loss.backward()
        optimizer.step()
    after = objective(fusion(text, image), Batch(keys=["a", "b"], itm_labels=labels)).logs
    assert after["wpa_distance_matching"] < before["wpa_distance_matching"] - 0.1
    assert after["wpa_distance_mismatched"] > before["wpa_distance_mismatched"] + 0.1


def test_computed_in_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(3)
    outputs = fusion(torch.randn(2, 6, 8), torch.randn(2, 5, 8))
    batch = Batch(keys=["a", "b"], itm_labels=torch.tensor([1, 0]))
    reference = WPAObjective()(outputs, batch).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = WPAObjective()(outputs, batch).loss
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference)


def test_needs_itm_labels_and_sane_settings() -> None:
    with pytest.raises(ValueError, match="itm_labels"):
        WPAObjective()(fusion(torch.randn(1, 4, 8), torch.randn(1, 3, 8)), Batch(keys=["a"]))
    with pytest.raises(ValueError, match="beta"):
        WPAObjective(beta=0.0)
