"""``python -m vlp bench sparse-attention``: the memory probe, the layout, the refusal to time different
computations, and a tiny end-to-end run whose last two lines are ``speedup: S`` and ``memory: M``
(not timed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vlp.bench import sparse_attention
from vlp.bench.sparse_attention import SparseAttentionConfig, make_layout, make_setups, peak_memory, step
from vlp.cli import main

TINY = [
    "--dim", "16", "--num_heads", "2", "--text_len", "8", "--grid", "5", "--depth", "4",
    "--steps", "2", "--warmup", "0", "--threads", "1",
]  # fmt: skip


def test_peak_memory_counts_live_tensor_bytes() -> None:
    def allocate() -> None:
        first = torch.empty(2**20)  # 4 MiB
        second = torch.empty(2**21)  # 8 MiB, both alive
        del first, second
        third = torch.empty(2**20)  # 4 MiB after the others are freed
        del third

    assert peak_memory(allocate) == 12 * 2**20


def test_layout_pads_the_last_quarter_of_every_second_text() -> None:
    layout = make_layout(SparseAttentionConfig(batch_size=3, text_len=8, grid=2))
    text = layout.key_mask[:, layout.text_start : layout.text_start + 8]
    assert text[0].all() and text[2].all()
    assert text[1].tolist() == [True] * 6 + [False] * 2
    assert layout.key_mask[:, layout.image_start :].all()


def test_a_run_whose_outputs_disagree_stops_before_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    original = sparse_attention.make_setups

    def broken(config: SparseAttentionConfig):  # dense weights no longer those of the blocked stack
        setups = original(config)
        with torch.no_grad():
            setups[1].stack.layers[0].proj.bias.add_(1.0)
        return setups

    monkeypatch.setattr(sparse_attention, "make_setups", broken)
    monkeypatch.setattr(sparse_attention, "time_steps", lambda *args: pytest.fail("timed anyway"))
    with pytest.raises(RuntimeError, match="row blocked and dense outputs differ"):
        main(["bench", "sparse-attention", *TINY])


def test_bench_runs_end_to_end_and_prints_speedup_and_memory_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sparse_attention.md"
    main(["bench", "sparse-attention", *TINY, "--out", str(out)])
    printed = capsys.readouterr().out
    lines = printed.strip().splitlines()
    assert re.fullmatch(r"speedup: \d+\.\d\d", lines[-2]) and float(lines[-2].split()[1]) > 0
    assert re.fullmatch(r"memory: \d+\.\d\d", lines[-1]) and float(lines[-1].split()[1]) > 0
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and "---" not in line][1:]
    setups = [(row[0].lstrip("| "), row[1], row[2]) for row in rows]
    assert setups == [
        ("row", "1", "blocked"), ("row", "1", "dense"),
        ("column", "1", "blocked"), ("column", "1", "dense"),
        ("conv", "1", "blocked"), ("conv", "1", "dense"),
        ("schedule", "4", "blocked"), ("schedule", "4", "blocked (qkv kept)"),
        ("schedule", "4", "blocked (no recompute)"), ("schedule", "4", "dense"),
        ("schedule", "4", "dense (checkpointed)"), ("schedule", "4", "dense (math)"),
    ]  # fmt: skip
    assert all(row[5] == "1.00x" for row in rows if row[2] == "dense")
    assert re.fullmatch(r"against dense \(checkpointed\): speedup \d+\.\d\d, memory \d+\.\d\d", lines[-3])
    assert "schedule = row, row, column, conv" in printed and "33 tokens" in printed
    assert "text to image, fp32;" in printed
    assert out.read_text().strip() == printed.strip()


def test_bf16_run_steps_under_autocast_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    main(["bench", "sparse-attention", *TINY, "--precision", "bf16-mixed", "--math_reference", "false"])
    printed = capsys.readouterr().out
    assert "text to image, bf16 autocast;" in printed
    assert float(printed.strip().splitlines()[-2].split()[1]) > 0


def test_bf16_setups_compute_in_bf16_and_keep_float_gradients() -> None:
    config = SparseAttentionConfig(dim=16, num_heads=2, text_len=8, grid=4, depth=4, precision="bf16-mixed")
    layout = make_layout(config)
    x = torch.randn(config.batch_size, layout.length, config.dim)
    for setup in make_setups(config):
        with setup.context():
            assert setup.stack.layers[0].qkv(x).dtype == torch.bfloat16, setup.attention
        step(setup, x, layout)
        grads = [p.grad for p in setup.stack.parameters()]
        assert all(g is not None and g.dtype == torch.float32 for g in grads), setup.attention


def test_schedule_rows_keep_what_they_claim() -> None:
    """Peaks of one step of the schedule rows: regenerating qkv keeps less than keeping it (by most of
    the layers' qkv), and checkpointing dense keeps less than dense."""
    config = SparseAttentionConfig(dim=64, num_heads=4, text_len=8, grid=8, depth=4)
    layout = make_layout(config)
    x = torch.randn(config.batch_size, layout.length, config.dim)
    peaks = {}
    for setup in make_setups(config):
        if setup.name == "schedule" and setup.attention != "dense (math)":
            peaks[setup.attention] = peak_memory(lambda s=setup: step(s, x, layout))
    qkv_bytes = 3 * x.nbytes  # one layer's fused projection, fp32
    assert peaks["blocked (qkv kept)"] - peaks["blocked"] > 2 * qkv_bytes
    assert peaks["blocked (no recompute)"] > peaks["blocked (qkv kept)"]
    assert peaks["dense"] - peaks["dense (checkpointed)"] > 2 * qkv_bytes


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        SparseAttentionConfig(dim=10, num_heads=3)
    with pytest.raises(ValueError, match="depth"):
        SparseAttentionConfig(depth=0)
