"""``python -m vlp bench detection-loss``: both sides compute the same loss and gradients on the same
inputs (what makes the timing comparison fair), the run refuses to time different computations, and a
quick end-to-end run prints the table with ``ratio: R`` last (not timed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vlp.bench import detection_loss
from vlp.bench.detection_loss import (
    DetectionLossConfig,
    compare_losses,
    make_inputs,
    transformers_loss,
    vlp_loss,
)
from vlp.cli import main

QUICK = [
    "--batch_size", "3", "--queries", "12", "--num_classes", "7", "--min_boxes", "0", "--max_boxes", "5",
    "--layers", "2", "--steps", "2", "--warmup", "1", "--threads", "1",
]  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [
        DetectionLossConfig(),  # the benchmark's own sizes
        DetectionLossConfig(
            batch_size=4, queries=6, num_classes=3, min_boxes=0, max_boxes=8, layers=3, seed=1
        ),
    ],
    ids=["default", "empty-images-and-more-boxes-than-queries"],
)
def test_vlp_and_transformers_compute_the_same_loss_and_gradients(config: DetectionLossConfig) -> None:
    inputs = make_inputs(config)
    counts = [len(t.labels) for t in inputs.targets]
    assert all(config.min_boxes <= c <= config.max_boxes for c in counts)
    ours, theirs = compare_losses(config, inputs)
    assert ours == pytest.approx(theirs, rel=1e-5)
    gradients = []
    for build in (vlp_loss, transformers_loss):
        logits, boxes = inputs.fresh()
        build(config)(logits, boxes, inputs.targets).backward()
        gradients.append((logits.grad, boxes.grad))
    for ours_grad, theirs_grad in zip(*gradients):
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-4, atol=1e-7)


def test_inputs_are_seeded_and_valid() -> None:
    config = DetectionLossConfig(batch_size=5, queries=7, num_classes=4, layers=2)
    first, second = make_inputs(config), make_inputs(config)
    assert torch.equal(first.logits, second.logits) and torch.equal(first.boxes, second.boxes)
    assert first.logits.shape == (2, 5, 7, 5) and first.boxes.shape == (2, 5, 7, 4)
    for target in first.targets:
        assert 1 <= len(target.labels) <= 20 and target.labels.max() < 4
        corners = torch.cat(
            [target.boxes[:, :2] - target.boxes[:, 2:] / 2, target.boxes[:, :2] + target.boxes[:, 2:] / 2]
        )
        assert corners.min() >= 0 and corners.max() <= 1
    logits, _ = first.fresh()
    assert logits.requires_grad and logits.is_leaf and logits.data_ptr() != first.logits.data_ptr()


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="min_boxes"):
        DetectionLossConfig(min_boxes=5, max_boxes=2)
    with pytest.raises(ValueError, match="queries"):
        DetectionLossConfig(queries=0)


def test_a_run_whose_losses_disagree_stops_before_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    original = detection_loss.vlp_loss

    def shifted(config: DetectionLossConfig):  # a different computation: the loss plus one
        loss = original(config)
        return lambda logits, boxes, targets: loss(logits, boxes, targets) + 1.0

    monkeypatch.setattr(detection_loss, "vlp_loss", shifted)
    monkeypatch.setattr(detection_loss, "time_steps", lambda *args: pytest.fail("timed anyway"))
    with pytest.raises(RuntimeError, match="differs from transformers"):
        main(["bench", "detection-loss", *QUICK])


def test_bench_runs_end_to_end_and_prints_the_ratio_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "detection_loss.md"
    main(["bench", "detection-loss", *QUICK, "--out", str(out)])
    printed = capsys.readouterr().out
    lines = printed.strip().splitlines()
    ratio = re.fullmatch(r"ratio: (\d+\.\d\d)", lines[-1])
    assert ratio is not None and float(ratio.group(1)) > 0
    rows = [line for line in lines if line.startswith("| vlp") or line.startswith("| transformers")]
    assert len(rows) == 2
    losses = [float(row.rstrip(" |").rsplit("|", 1)[1]) for row in rows]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert "12 queries" in printed and "threads 1," in printed
    assert out.read_text().strip() == printed.strip()
