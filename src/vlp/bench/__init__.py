"""Benchmarks: ``python -m vlp bench <name> [options]``; every published figure goes to benchmarks/RESULTS.md.

- ``scaling``: training samples/s of a pre-training step with 1 process, 2-process DDP and 2-process
  FSDP2 (:mod:`vlp.bench.scaling`).
- ``detection-loss``: DETR's Hungarian matcher + set loss (forward and backward) per batch, vlp against
  transformers' ``ForObjectDetectionLoss`` in the same run (:mod:`vlp.bench.detection_loss`).
- ``vilt``: vlp's ViLT-B/32 against transformers' ViLT, training samples/s, peak memory, inference
  latency and achieved FLOP/s in fp32 and bf16, in the same run (:mod:`vlp.bench.vilt`).
- ``sparse-attention``: ERNIE-ViLG's row / column / conv sparse attention and the paper's layer
  schedule against dense attention with the same masks, time and peak memory of forward + backward
  (:mod:`vlp.bench.sparse_attention`).
- ``cpu-kernels``: SDPA's fused vs math CPU kernel in fp32 and bf16, and AdamW's for-loop / foreach /
  fused step, the two choices behind vlp's CPU training speed (:mod:`vlp.bench.cpu_kernels`).
- ``sweep-overhead``: a sweep of 4 short trials against the same 4 fits run by hand, the overhead per
  trial (:mod:`vlp.bench.sweep_overhead`).
- ``zoo-load``: time to a ready ViLT-B/32, ``vlp.zoo.load`` of a pretrained folder against transformers'
  ``ViltModel.from_pretrained`` of the same weights (:mod:`vlp.bench.zoo_load`).
- ``data``: images/s of vlp's training loader against a bare decode-and-resize loop over the same JPEG
  shards, and of the shard writer against copying the files (:mod:`vlp.bench.data_loader`).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence

BENCHMARKS: dict[str, str] = {
    "scaling": "vlp.bench.scaling",
    "detection-loss": "vlp.bench.detection_loss",
    "vilt": "vlp.bench.vilt",
    "sparse-attention": "vlp.bench.sparse_attention",
    "cpu-kernels": "vlp.bench.cpu_kernels",
    "sweep-overhead": "vlp.bench.sweep_overhead",
    "zoo-load": "vlp.bench.zoo_load",
    "data": "vlp.bench.data_loader",
}
SUMMARIES: dict[str, str] = {
    "scaling": "training samples/s with 1 process, 2-process DDP and 2-process FSDP2",
    "detection-loss": "DETR's matcher + set loss, vlp against transformers",
    "vilt": "ViLT-B/32 training and inference, vlp against transformers, fp32 and bf16",
    "sparse-attention": "ERNIE-ViLG's sparse attention against dense attention, time and memory",
    "cpu-kernels": "SDPA's CPU kernels and AdamW's step implementations, fp32 and bf16",
    "sweep-overhead": "wall time of a 4-trial sweep against the same 4 fits run by hand, per trial",
    "zoo-load": "time to a ready ViLT-B/32: vlp.zoo.load against transformers' from_pretrained",
    "data": "images/s of vlp's training loader against bare JPEG decode + resize, and of the converter",
}


def main(args: Sequence[str]) -> None:
    """Run the benchmark named by ``args[0]`` with the remaining arguments; help for none or ``--help``.
    A benchmark's module is imported only when it runs."""
    from vlp.tool_commands import run_tool, tool_help

    help_text = tool_help(
        "python -m vlp bench <name> [options]",
        "Benchmarks; every published figure is in benchmarks/RESULTS.md.",
        "benchmarks",
        SUMMARIES,
        "`python -m vlp bench <name> --help` lists a benchmark's options.",
    )
    runners = {name: functools.partial(_run, module) for name, module in BENCHMARKS.items()}
    run_tool(args, help_text, "benchmark", runners)


def _run(module: str, argv: list[str]) -> None:
    importlib.import_module(module).main(argv)
