"""The report: the markdown section for benchmarks/RESULTS.md and vlp's samples/s over transformers'."""

from __future__ import annotations

from typing import Any

import torch

from vlp.bench.vilt.config import MATMUL_SHAPE, SIDES, ViltBenchConfig


def best(result: dict[str, Any], side: str) -> float:
    """The side's samples/s in its faster variant (eager, or compiled when measured)."""
    return max(r["samples_per_s"] for name, r in result["sides"].items() if name.split()[0] == side)


def ratios(report: dict[str, Any]) -> dict[str, float]:
    """vlp samples/s over transformers samples/s, per precision, each side in its faster variant."""
    return {r["precision"]: best(r, "vlp") / best(r, "transformers") for r in report["results"]}


def markdown(config: ViltBenchConfig, report: dict[str, Any], command: str) -> str:
    """A section for benchmarks/RESULTS.md: the command, the set-up, one row per model and precision."""
    import transformers

    params = {side: report["parameters"][side] / 1e6 for side in SIDES}
    mlp = int(config.dim * config.mlp_ratio)
    setup = (
        f"ViLT width {config.dim}, {config.depth} layers, {config.num_heads} heads, MLP {mlp}, "
        f"patch {config.patch_size}, {config.image_size} px, {config.tokens} tokens ({config.text_len} text, "
        f"{config.num_masked} MLM labels/sample), vocab {config.vocab_size}, MLM decoder tied; "
        f"batch {config.batch_size}; MLM + ITM, AdamW ({config.adamw}); dropout 0; "
        f"{params['vlp']:.1f} M (vlp) / {params['transformers']:.1f} M (transformers) parameters; "
        f"{config.steps} timed steps each after {config.warmup} warm-up, interleaved, medians; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"torch threads {report['threads']}, {report['device']}; glibc malloc "
        + (
            "keeps freed memory (vlp.allocator, both models: one process)."
            if report.get("keep_freed_memory")
            else "with its default settings (VLP_KEEP_FREED_MEMORY unset or 0)."
        )
    )
    if config.compile:
        compiled = config.compile_config
        setup += (
            f" Compiled rows: a copy of each model with every transformer block compiled in place "
            f"(vlp's Block, transformers' ViltLayer; backend {compiled.backend}, mode {compiled.mode or 'default'}, "
            f"dynamic {compiled.dynamic}, one graph per block), compiled in its warm-up; their "
            '"vs transformers" is against transformers compiled, and the ratio compares each side\'s faster row.'
        )
    lines = [
        f"`{command}`",
        "",
        setup,
        "",
        "| precision | model | samples/s | step (ms) | vs transformers | GFLOP/step | achieved GFLOP/s "
        "| of matmul | inference (ms/pair) | peak RSS (MiB) | step's share (MiB) "
        "| step-0 losses (MLM, ITM) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        precision = result["precision"]
        for name, r in result["sides"].items():
            # against transformers run the same way (eager or compiled)
            base = result["sides"][name.replace("vlp", "transformers")]["samples_per_s"]
            mem = report["memory"].get(f"{name}/{precision}")
            peak = f"{mem['peak_rss_mib']:.0f}" if mem else "-"
            share = f"{mem['step_mib']:.0f}" if mem else "-"
            mlm, itm = r["losses"][0]
            lines.append(
                f"| {precision} | {name} | {r['samples_per_s']:.3f} | {1000 * r['step_s']:.0f} | "
                f"{r['samples_per_s'] / base:.2f}x | {r['flops'] / 1e9:.4g} | {r['flop_per_s'] / 1e9:.4g} | "
                f"{r['of_matmul']:.2f} | {r['infer_ms']:.1f} | {peak} | {share} | {mlm:.4f}, {itm:.4f} |"
            )
    lines.append("")
    m, k, n = MATMUL_SHAPE
    for result in report["results"]:
        steps = "; ".join(
            f"{name} " + ", ".join(f"{1000 * t:.0f}" for t in r["all_step_s"])
            for name, r in result["sides"].items()
        )
        lines.append(
            f"- {result['precision']}: matmul [{m}x{k}] @ [{k}x{n}] "
            f"{result['matmul_flop_per_s'] / 1e9:.1f} GFLOP/s (median); every timed step (ms): {steps}"
        )
    return "\n".join(lines) + "\n"
