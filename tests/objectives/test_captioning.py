"""Captioning objective: next-token cross-entropy on a hand case, with and without label smoothing, on
real targets only (padding ignored, the head never sees it), and clear errors on missing fields."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlp.batch import Batch
from vlp.models.e2e_vlp.model import CaptionOutput
from vlp.objectives import CaptioningObjective

VOCAB = 4


class RecordingIdentity(nn.Module):
    """The states are the logits (D = V); remembers what it was applied to."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return x


def caption_batch(ids: list[list[int]], lengths: list[int]) -> Batch:
    caption_ids = torch.tensor(ids)
    mask = torch.arange(caption_ids.shape[1])[None] < torch.tensor(lengths)[:, None]
    return Batch(keys=[str(i) for i in range(len(ids))], caption_ids=caption_ids, caption_mask=mask)


# two captions: [1, 3, 2] (+ one pad) and [1, 2, 3, 2]; targets are the tokens after the first
BATCH = caption_batch([[1, 3, 2, 0], [1, 2, 3, 2]], [3, 4])
LOGITS = torch.tensor(
    [
        [[0.0, 1.0, 0.0, 2.0], [0.5, 0.0, 1.5, 0.0], [9.0, 9.0, 9.0, 9.0], [3.0, 0.0, 0.0, 0.0]],
        [[0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 1.0], [5.0, 5.0, 0.0, 0.0]],
    ]
)
# (sample, position) → target: (0,0)→3, (0,1)→2, (1,0)→2, (1,1)→3, (1,2)→2; (0,2) predicts padding
TARGETS = [(0, 0, 3), (0, 1, 2), (1, 0, 2), (1, 1, 3), (1, 2, 2)]


def nll(row: list[float], target: int) -> float:
    return -(row[target] - math.log(sum(math.exp(v) for v in row)))


def test_loss_is_the_mean_next_token_nll_over_real_targets() -> None:
    head = RecordingIdentity()
    out = CaptioningObjective()(CaptionOutput(LOGITS.clone().requires_grad_(), head), BATCH)
    expected = sum(nll(LOGITS[b, t].tolist(), y) for b, t, y in TARGETS) / len(TARGETS)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert head.seen == [(5, VOCAB)]  # the head saw the 5 target positions, not [B, T, D]
    # accuracy: argmax 3 ✓, 2 ✓, 2 ✓, 0 (first of ties) ✗ for 3, 1 ✗ for 2
    assert out.logs["caption_acc"].item() == pytest.approx(3 / 5)
    assert out.logs["caption_nll"].item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_mixes_in_the_uniform_cross_entropy() -> None:
    eps = 0.2
    out = CaptioningObjective(label_smoothing=eps)(CaptionOutput(LOGITS, nn.Identity()), BATCH)
    expected = 0.0
    for b, t, y in TARGETS:
        row = LOGITS[b, t].tolist()
        expected += (1 - eps) * nll(row, y) + eps * sum(nll(row, k) for k in range(VOCAB)) / VOCAB
    assert out.loss.item() == pytest.approx(expected / len(TARGETS), rel=1e-6)
    rows = torch.stack([LOGITS[b, t] for b, t, _ in TARGETS])
    labels = torch.tensor([y for _, _, y in TARGETS])
    assert out.loss.item() == pytest.approx(
        F.cross_entropy(rows, labels, label_smoothing=eps).item(), rel=1e-6
    )
    plain = sum(nll(LOGITS[b, t].tolist(), y) for b, t, y in TARGETS) / len(TARGETS)
    assert out.logs["caption_nll"].item() == pytest.approx(plain, rel=1e-6)  # logged without smoothing


def test_padding_and_the_last_position_are_ignored() -> None:
    objective = CaptioningObjective(label_smoothing=0.1)
    base = objective(CaptionOutput(LOGITS, nn.Identity()), BATCH).loss
    changed_logits = LOGITS.clone()
    changed_logits[0, 2:] = torch.randn(2, VOCAB) * 10  # predicts padding / after the end
    changed_logits[1, 3] = torch.randn(VOCAB) * 10  # the last position has no next token
    changed = caption_batch([[1, 3, 2, 3], [1, 2, 3, 2]], [3, 4])  # a different token under the pad
    assert objective(CaptionOutput(changed_logits, nn.Identity()), changed).loss.item() == pytest.approx(
        base.item(), rel=1e-6
    )
    changed_logits[1, 2, 2] += 1.0  # a real target's logit: the loss moves
    assert objective(CaptionOutput(changed_logits, nn.Identity()), changed).loss.item() < base.item()


def test_gradient_reaches_only_the_target_positions() -> None:
    states = LOGITS.clone().requires_grad_()
    CaptioningObjective()(CaptionOutput(states, nn.Identity()), BATCH).loss.backward()
    touched = states.grad.abs().sum(-1) > 0
    assert touched.tolist() == [[True, True, False, False], [True, True, True, False]]


def test_no_targets_give_a_zero_loss_that_still_reaches_the_head() -> None:
    head = nn.Linear(3, VOCAB)
    batch = caption_batch([[1, 0, 0], [1, 0, 0]], [1, 1])
    out = CaptioningObjective()(CaptionOutput(torch.randn(2, 3, 3), head), batch)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert head.weight.grad is not None


def test_missing_fields_and_bad_arguments_are_named() -> None:
    objective = CaptioningObjective()
    with pytest.raises(ValueError, match="caption_ids"):
        objective(CaptionOutput(LOGITS, nn.Identity()), Batch(keys=["a", "b"]))
    with pytest.raises(ValueError, match=r"outputs\.states"):
        objective(CaptionOutput(LOGITS[:, :3], nn.Identity()), BATCH)
    with pytest.raises(ValueError, match="label_smoothing"):
        CaptioningObjective(label_smoothing=1.0)
