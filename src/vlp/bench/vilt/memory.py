"""Peak memory of one side's training steps, measured in a fresh ``python -m vlp.bench.vilt
--memory_worker ...`` process (:func:`run_memory` starts it, :func:`worker_main` is its entry)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from vlp.allocator import ENV_VAR, configure_from_env, is_active
from vlp.bench.vilt.batch import make_batch
from vlp.bench.vilt.config import SIDES, Precision, Side, ViltBenchConfig
from vlp.bench.vilt.step import StepRunner
from vlp.bench.vilt.transformers_side import TransformersSide
from vlp.bench.vilt.vlp_side import VlpSide


def read_status_kib(key: str) -> float | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), ``None`` off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_worker(side: Side, precision: Precision, config: ViltBenchConfig) -> dict[str, float]:
    """Build one side, train ``memory_steps`` steps, return peak RSS (MiB) and the steps' share of it."""
    torch.set_num_threads(config.threads)
    # The same imports whichever side is built, so that they weigh the same in the peak.
    from transformers import ViltForMaskedLM  # noqa: F401

    import vlp.models.vilt
    import vlp.objectives  # noqa: F401

    torch.manual_seed(config.seed)
    module: nn.Module = VlpSide(config) if side == "vlp" else TransformersSide(config)
    runner = StepRunner(side, module, config, make_batch(config, config.batch_size, config.seed + 1))
    before = read_status_kib("VmRSS")
    exact = reset_peak_rss()
    for _ in range(config.memory_steps):
        runner.step(precision)
    peak = read_status_kib("VmHWM") if exact else None
    if peak is None:  # ru_maxrss: the process's peak since it started, construction included
        peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return {
        "peak_rss_mib": peak / 1024,
        "step_mib": (peak - before) / 1024 if before is not None and exact else float("nan"),
    }


def run_memory(side: Side, precision: Precision, config: ViltBenchConfig, timeout: float) -> dict[str, float]:
    """:func:`memory_worker` in a fresh ``python -m vlp.bench.vilt --memory_worker`` process."""
    # the same malloc settings as this process (vlp.allocator), whatever the environment says
    env = {**os.environ, "OMP_NUM_THREADS": str(config.threads), ENV_VAR: "1" if is_active() else "0"}
    command = [
        sys.executable, "-m", "vlp.bench.vilt", "--memory_worker", side, "--precision", precision,
        "--config_json", json.dumps(asdict(config)),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"bench vilt: memory run of {side} {precision} took longer than {timeout} s"
        ) from None
    if done.returncode != 0:
        raise RuntimeError(f"bench vilt: memory run of {side} {precision} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlp.bench.vilt")
    parser.add_argument("--memory_worker", choices=SIDES, required=True)
    parser.add_argument("--precision", choices=["fp32", "bf16"], required=True)
    parser.add_argument("--config_json", required=True)
    args = parser.parse_args(argv)
    config = ViltBenchConfig(**json.loads(args.config_json))
    configure_from_env()
    print(json.dumps(memory_worker(args.memory_worker, args.precision, config)))
