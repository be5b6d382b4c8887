"""The measurements: FLOPs per step (``FlopCounterMode``), the reference matmul, interleaved timed
training steps and inference passes per precision, and :func:`run`, every measurement of one run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlp.allocator import is_active
from vlp.bench.command import cpu_features, cpu_name
from vlp.bench.vilt.batch import make_batch
from vlp.bench.vilt.config import MATMUL_SHAPE, SIDES, Precision, Side, ViltBenchConfig
from vlp.bench.vilt.memory import run_memory
from vlp.bench.vilt.step import StepRunner, build_sides, compiled_copy


def sdpa_cpu_flop_mapping() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for the CPU flash-attention ops, which ``FlopCounterMode`` does not list yet."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(
        grad: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        return sdpa_backward_flop_count(grad, query, key, value)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def count_step_flops(runner: StepRunner) -> int:
    """FLOPs of one forward + backward (fp32; matmul-like ops, as ``FlopCounterMode`` counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    runner.module.train()
    counter = FlopCounterMode(display=False, custom_mapping=sdpa_cpu_flop_mapping())
    with counter:
        mlm, itm = runner.losses("fp32")
        (mlm + itm).backward()
    runner.module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


class Matmul:
    """A plain ``[M, K] @ [K, N]`` product in the run's precision: the machine's attainable FLOP/s."""

    def __init__(self, repeats: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        m, k, n = MATMUL_SHAPE
        self.repeats = repeats
        self.flops = 2 * m * k * n * repeats
        self.operands = {
            dtype: (
                torch.randn(m, k, generator=generator).to(dtype),
                torch.randn(k, n, generator=generator).to(dtype),
            )
            for dtype in (torch.float32, torch.bfloat16)
        }

    def run(self, precision: Precision) -> float:
        """Seconds for ``repeats`` products."""
        a, b = self.operands[torch.bfloat16 if precision == "bf16" else torch.float32]
        start = time.perf_counter()
        for _ in range(self.repeats):
            torch.mm(a, b)
        return time.perf_counter() - start


def timed(fn: Callable[[Precision], Any], precision: Precision) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(precision)
    return time.perf_counter() - start, result


def measure_precision(
    precision: Precision, runners: dict[str, StepRunner], matmul: Matmul, config: ViltBenchConfig
) -> dict[str, Any]:
    """Interleaved training steps, matmul bursts and inference passes of every variant (``runners``, by
    row name: both sides, eager and with ``compile`` compiled) in ``precision``. A compiled variant
    compiles in its warm-up steps and first inference passes, which are not timed."""
    names = list(runners)
    losses: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(config.warmup):
        for name in names:
            mlm, itm = runners[name].step(precision)
            losses[name].append((float(mlm), float(itm)))
    matmul.run(precision)
    step_s: dict[str, list[float]] = {name: [] for name in names}
    matmul_s: list[float] = []
    for i in range(config.steps):
        for name in names if i % 2 == 0 else names[::-1]:
            seconds, (mlm, itm) = timed(runners[name].step, precision)
            step_s[name].append(seconds)
            losses[name].append((float(mlm), float(itm)))
        matmul_s.append(matmul.run(precision))
    for _ in range(2):
        for name in names:
            runners[name].infer(precision)
    infer_s: dict[str, list[float]] = {name: [] for name in names}
    for i in range(config.infer_steps):
        for name in names if i % 2 == 0 else names[::-1]:
            infer_s[name].append(timed(runners[name].infer, precision)[0])
    matmul_flops = matmul.flops / statistics.median(matmul_s)
    return {
        "precision": precision,
        "matmul_flop_per_s": matmul_flops,
        "sides": {
            name: {
                "step_s": statistics.median(step_s[name]),
                "samples_per_s": config.batch_size / statistics.median(step_s[name]),
                "all_step_s": step_s[name],
                "infer_ms": 1000 * statistics.median(infer_s[name]),
                "losses": losses[name],  # warm-up steps first: [0] is step 0
            }
            for name in names
        },
    }


def run(
    config: ViltBenchConfig, timeout: float = 1800.0, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every measurement of the benchmark; the report is :func:`markdown` of this."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, timeout, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config: ViltBenchConfig, timeout: float, log: Callable[[str], None]) -> dict[str, Any]:
    vlp, hf = build_sides(config)
    batch = make_batch(config, config.batch_size, config.seed + 1)
    models: dict[Side, nn.Module] = {"vlp": vlp, "transformers": hf}
    eager = {side: StepRunner(side, models[side], config, batch) for side in SIDES}
    flops = {side: count_step_flops(eager[side]) for side in SIDES}  # the same with compiled blocks
    parameters = {side: sum(p.numel() for p in models[side].parameters()) for side in SIDES}
    matmul = Matmul(config.matmul_repeats, config.seed)
    initial = {side: {k: v.clone() for k, v in models[side].state_dict().items()} for side in SIDES}
    runners = {
        variant.name: StepRunner(
            variant.side, compiled_copy(variant.side, models[variant.side], config), config, batch
        )
        if variant.compiled
        else eager[variant.side]
        for variant in config.variants
    }
    results = []
    for precision in config.precisions:
        for variant in config.variants:
            runners[variant.name].restart(initial[variant.side])
        log(f"{precision}: {config.warmup} warm-up + {config.steps} timed steps per model ...")
        result = measure_precision(precision, runners, matmul, config)
        for variant in config.variants:
            record = result["sides"][variant.name]
            record["flops"] = flops[variant.side]
            record["flop_per_s"] = flops[variant.side] / record["step_s"]
            record["of_matmul"] = record["flop_per_s"] / result["matmul_flop_per_s"]
        results.append(result)
    memory: dict[str, dict[str, float]] = {}
    if config.memory:
        for precision in config.precisions:
            for side in SIDES:
                log(f"{precision}: peak memory of {side} (subprocess) ...")
                memory[f"{side}/{precision}"] = run_memory(side, precision, config, timeout)
    return {
        "results": results,
        "memory": memory,
        "parameters": parameters,
        "threads": torch.get_num_threads(),
        "device": f"{cpu_name()} ({cpu_features()})",
        "keep_freed_memory": is_active(),
    }
