"""``python -m vlp bench vilt``: the weight mapping that makes the comparison fair, the FLOP count,
the memory probe and the report format, all at tiny sizes (nothing here is timed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch

from vlp.bench.vilt import (
    SIDES,
    SMOKE,
    StepRunner,
    ViltBenchConfig,
    build_sides,
    count_step_flops,
    make_batch,
    run_memory,
)
from vlp.cli import main

TINY = replace(ViltBenchConfig(), **SMOKE)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one thread, so a busy machine's OpenMP barriers do not dominate."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        ViltBenchConfig(image_size=100, patch_size=32)
    with pytest.raises(ValueError, match="precisions"):
        ViltBenchConfig(precisions=["fp16"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="mask_prob"):
        ViltBenchConfig(mask_prob=0.0)


def test_batch_masks_fifteen_percent_never_the_first_token() -> None:
    config = ViltBenchConfig(text_len=40, vocab_size=50)
    batch = make_batch(config, size=3, seed=0)
    labelled = batch.mlm_labels != -100
    assert config.num_masked == 6
    assert labelled.sum(1).tolist() == [6, 6, 6]
    assert not labelled[:, 0].any()
    assert (batch.text_ids[labelled] == 4).all() and (batch.text_ids[~labelled] > 4).all()
    assert (batch.mlm_labels[labelled] > 4).all()
    torch.testing.assert_close(batch.pixels, make_batch(config, size=3, seed=0).pixels)


def test_both_sides_train_identically_from_copied_weights() -> None:
    """Same weights, same batch, same labels: the same losses at step 0 and, after one AdamW step
    each, again at step 1 (so the gradients agreed too); the tied decoder is tied on both sides."""
    config = replace(TINY, depth=2, batch_size=3)
    vlp, hf = build_sides(config)
    assert vlp.mlm.head.decoder.weight is vlp.model.text_embedder.word_embeddings.weight
    assert (
        hf.mlm_model.mlm_score.decoder.weight
        is hf.mlm_model.vilt.embeddings.text_embeddings.word_embeddings.weight
    )
    assert sum(p.numel() for p in vlp.parameters()) == sum(p.numel() for p in hf.parameters())
    batch = make_batch(config, config.batch_size, seed=1)
    runners = {
        "vlp": StepRunner("vlp", vlp, config, batch),
        "transformers": StepRunner("transformers", hf, config, batch),
    }
    for step in range(3):
        losses = {side: runners[side].step("fp32") for side in SIDES}
        assert all(torch.isfinite(loss) for pair in losses.values() for loss in pair)
        torch.testing.assert_close(
            losses["vlp"], losses["transformers"], rtol=1e-5, atol=1e-5, msg=f"step {step}"
        )
    first = vlp.model.encoder.blocks[0].attn.qkv.weight
    key = hf.mlm_model.vilt.encoder.layer[0].attention.attention.key.weight
    torch.testing.assert_close(first[config.dim : 2 * config.dim], key, rtol=1e-5, atol=1e-6)


def test_flop_counts_differ_by_the_mlm_positions_last_layer_rows_and_attention_recompute() -> None:
    """transformers' MLM head runs on every text position, vlp's on the labelled ones; vlp's last layer
    computes only the rows the heads read; SDPA's backward recomputes the scores (one more
    ``q @ k^T``), which the count must include."""
    config = replace(TINY, depth=2, batch_size=2)
    vlp, hf = build_sides(config)
    batch = make_batch(config, config.batch_size, seed=1)
    flops = {
        side: count_step_flops(StepRunner(side, module, config, batch))
        for side, module in zip(SIDES, (vlp, hf))
    }
    b, d, v = config.batch_size, config.dim, config.vocab_size
    skipped_rows = b * config.text_len - b * config.num_masked
    mlm = 3 * 2 * skipped_rows * (d * d + d * v)  # forward + 2 backward matmuls, dense + decoder
    recompute = config.depth * 2 * b * config.tokens**2 * d
    # last layer, per row not read (all but [CLS] and the labelled ones): no query projection, output
    # projection or MLP (2d^2 + 2d^2 + 2 * 2 * d * 4d forward, x3 with backward), and no attention
    # row (q k^T and p v forward, 4 matmuls backward, SDPA's recompute of q k^T: 7 x 2Nd)
    unread = b * (config.tokens - config.num_masked - 1)
    last_layer = unread * (3 * 20 * d * d + 7 * 2 * config.tokens * d)
    assert flops["transformers"] - flops["vlp"] == mlm - recompute + last_layer


@pytest.mark.slow
def test_memory_probe_reports_the_step_inside_the_peak() -> None:
    record = run_memory("vlp", "fp32", replace(TINY, memory_steps=1), timeout=300.0)
    assert 0 < record["step_mib"] < record["peak_rss_mib"]


def test_smoke_run_prints_the_table_and_the_lower_ratio_last(capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(2)
    main(["bench", "vilt", "--smoke", "true"])
    assert torch.get_num_threads() == 2  # the run's own thread count is not left behind
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {}
    for line in lines:
        found = re.match(
            r"^\| (fp32|bf16) \| (vlp|transformers) \| ([\d.]+) \|.*\| ([\d.]+), ([\d.]+) \|$", line
        )
        if found:
            rows[found.group(1), found.group(2)] = [float(x) for x in found.groups()[2:]]
    assert set(rows) == {(p, s) for p in ("fp32", "bf16") for s in SIDES}
    # Step 0 of the fp32 run: the same weights and labels on both sides, so the same losses.
    assert rows["fp32", "vlp"][1:] == pytest.approx(rows["fp32", "transformers"][1:], abs=2e-4)
    # Each precision restarts from the initial weights: bf16's step 0 is fp32's up to bf16 rounding.
    for side in SIDES:
        assert rows["bf16", side][1:] == pytest.approx(rows["fp32", side][1:], rel=2e-2)
    per_precision = dict(re.findall(r"(fp32|bf16) ratio: ([\d.]+)", lines[-2]))
    assert set(per_precision) == {"fp32", "bf16"}
    for precision, value in per_precision.items():
        expected = rows[precision, "vlp"][0] / rows[precision, "transformers"][0]
        assert float(value) == pytest.approx(expected, rel=2e-2)
    assert re.fullmatch(r"ratio: [\d.]+", lines[-1])
    assert float(lines[-1].split()[1]) == min(float(v) for v in per_precision.values())


def test_compile_adds_compiled_rows_from_the_same_weights(capsys: pytest.CaptureFixture[str]) -> None:
    """``--compile``: a compiled copy of each side (aot_eager here: no C++ compile) beside the eager rows,
    at the same step-0 losses; the ratio compares each side's faster row."""
    options = ["--precisions", "[fp32]", "--compile", "true", "--compile_backend", "aot_eager"]
    main(["bench", "vilt", "--smoke", "true", *options])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {}
    for line in lines:
        found = re.match(r"^\| fp32 \| ([a-z ]+) \| ([\d.]+) \|.*\| ([\d.]+), ([\d.]+) \|$", line)
        if found:
            rows[found.group(1)] = [float(x) for x in found.groups()[1:]]
    assert sorted(rows) == sorted([*SIDES, *(f"{side} compiled" for side in SIDES)])
    for side in SIDES:
        assert rows[f"{side} compiled"][1:] == pytest.approx(rows[side][1:], abs=1e-4)
    best = {side: max(rows[side][0], rows[f"{side} compiled"][0]) for side in SIDES}
    assert float(lines[-1].split()[1]) == pytest.approx(best["vlp"] / best["transformers"], rel=2e-2)
    with pytest.raises(ValueError, match=r"compile\.backend='nope'"):
        ViltBenchConfig(compile=True, compile_backend="nope")
