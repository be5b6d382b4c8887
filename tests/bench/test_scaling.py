"""``python -m vlp bench scaling``: the synthetic batches, the report, and a tiny end-to-end run (not timed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from vlp.bench.scaling import ScalingConfig, build_task, markdown, synthetic_batch
from vlp.cli import main

TINY = [
    "--steps", "2", "--warmup", "1", "--batch_size", "4", "--dim", "32", "--depth", "1",
    "--vocab_size", "200", "--text_len", "8", "--mlm_per_sample", "2", "--image_size", "16",
    "--patch_size", "8",
]  # fmt: skip


def test_synthetic_batch_has_equal_mlm_counts_and_trains() -> None:
    config = ScalingConfig(
        dim=32, depth=1, vocab_size=200, text_len=8, mlm_per_sample=3, image_size=16, patch_size=8
    )
    batch = synthetic_batch(config, size=6, seed=0)
    labelled = batch.mlm_labels != -100
    assert labelled.sum(1).tolist() == [3] * 6  # equal per sample, so equal per rank
    assert not labelled[:, 0].any()
    assert (batch.mlm_text_ids[labelled] == 4).all()
    torch.testing.assert_close(batch.pixels, synthetic_batch(config, size=6, seed=0).pixels)
    task = build_task(config)
    assert torch.isfinite(task.compute_losses(batch, "train"))
    assert config.tokens == 8 + 1 + 4


def test_batch_must_split_over_the_processes() -> None:
    with pytest.raises(ValueError, match="does not split"):
        ScalingConfig(batch_size=5, processes=2)


def test_markdown_rows_and_ratios() -> None:
    config = ScalingConfig(accelerator="cpu")
    record = {"processes": 1, "threads": 2, "device": "cpu", "step_ms": 100.0, "peak_memory_mib": 900.0}
    records = [
        {**record, "setup": "single", "samples_per_s": 100.0, "parameters": 8_000_000},
        {
            **record,
            "setup": "fsdp",
            "processes": 2,
            "threads": 1,
            "samples_per_s": 150.0,
            "parameters": 8_000_000,
        },
    ]
    text = markdown(config, records, "python -m vlp bench scaling")
    assert "| 1 process | 1 | 2 | 100.0 | 100 | 1.00x | 900 | 100.0 |" in text
    assert "| FSDP2 (ModelParallelStrategy) | 2 | 1 | 150.0 | 100 | 1.50x | 900 | 150.0 |" in text
    assert "peak RSS" in text


@pytest.mark.distributed
@pytest.mark.slow
def test_bench_scaling_runs_end_to_end_with_tiny_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m vlp bench scaling`` (dispatched here, so only the worker is a subprocess) on the
    2-process FSDP2 setup; the 1-process and DDP setups differ only in the strategy they pass."""
    for key in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "scaling.md"
    main(["bench", "scaling", *TINY, "--setups", "[fsdp]", "--out", str(out)])
    printed = capsys.readouterr().out
    row = re.search(
        r"^\| FSDP2 \(ModelParallelStrategy\) \| 2 \| (\d+) \| ([\d.]+) \|", out.read_text(), re.M
    )
    assert row is not None, out.read_text()
    assert int(row.group(1)) >= 1 and float(row.group(2)) > 0
    assert out.read_text() in printed


@pytest.mark.filterwarnings("ignore")
def test_the_default_task_is_the_16px_shapes_recipes_model_and_heads(shapes_p16_task: Any) -> None:
    """The bench builds its task in code from ``ScalingConfig``'s defaults; they are the 16-px shapes
    recipe's (configs/model/vilt_shapes_p16.yaml and its MLM and ITM heads), which its docstring and
    RESULTS name."""
    task = shapes_p16_task
    bench = build_task(ScalingConfig())

    def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
        return {name: list(p.shape) for name, p in module.named_parameters()}

    assert shapes(bench.model) == shapes(task.model)
    for name in ("mlm", "itm"):
        assert shapes(bench.objectives[name].head) == shapes(task.objectives[name].head)
