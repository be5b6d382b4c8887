"""``python -m vlp bench scaling``: training throughput of a pre-training step per strategy.

The same ViLT pre-training step (MLM + ITM through :class:`~vlp.tasks.PretrainTask`, AdamW, the task's
own ``training_step``) runs with one process, with 2-process DDP and with 2-process FSDP2
(``ModelParallelStrategy`` + ``fully_shard``), each in a fresh subprocess that Lightning itself
launches, on synthetic in-memory batches: no shards and no loader workers, so the figure is the model
and the strategy. The global batch is fixed (each of P processes trains ``batch_size / P`` samples a
step, the same optimisation), torch threads are split so that all processes together use
``--threads`` (default: every CPU this process may run on), and warm-up steps are not timed.
On a machine with GPUs the same command puts one process on each GPU and reports peak GPU memory
(``torch.cuda.max_memory_allocated``) instead of peak resident memory.

Each setup is also run by itself as ``python -m vlp.bench.scaling --worker SETUP ...``, which is
the command Lightning re-runs for the other ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from vlp.bench.command import command_line, cpu_name, parse_options, publish

Setup = Literal["single", "ddp", "fsdp"]
SETUP_TITLES: dict[str, str] = {
    "single": "1 process",
    "ddp": "DDP",
    "fsdp": "FSDP2 (ModelParallelStrategy)",
}
LAUNCH_ENV_KEYS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED")


@dataclass
class ScalingConfig:
    """What to measure. The defaults are the 16-px shapes model (configs/model/vilt_shapes_p16.yaml).

    Args:
        setups: which of ``single`` (1 process), ``ddp`` and ``fsdp`` to run, in this order.
        steps: timed optimiser steps per setup.
        warmup: untimed steps before them (allocation, autotuning, DDP bucket building).
        batch_size: the global batch; each of ``processes`` ranks gets an equal share.
        processes: processes of the DDP and FSDP2 setups (GPUs, when there are GPUs).
        mlm_per_sample: MLM labels per sample (the MLM head runs on labelled positions only).
        precision: Lightning precision, e.g. ``32-true`` or ``bf16-mixed``.
        accelerator: ``cpu``, ``gpu`` or ``auto`` (GPU when one exists).
        threads: torch threads of all processes together on the CPU (``None``: the CPUs available).
        repeats: run the setups this many times, interleaved (single, ddp, fsdp, single, ...), and
            report each setup's best run: on a shared machine the least disturbed one, and load
            that comes and goes hits every setup alike.
    """

    setups: list[Setup] = field(default_factory=lambda: ["single", "ddp", "fsdp"])
    steps: int = 20
    warmup: int = 5
    batch_size: int = 64
    dim: int = 128
    depth: int = 4
    num_heads: int = 4
    image_size: int = 64
    patch_size: int = 16
    text_len: int = 40
    vocab_size: int = 30522
    mlm_per_sample: int = 6
    processes: int = 2
    precision: str = "32-true"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    threads: int | None = None
    repeats: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup < 0 or self.repeats < 1:
            raise ValueError("steps and repeats must be >= 1, warmup >= 0")
        if self.processes < 1 or self.batch_size % self.processes:
            raise ValueError(f"batch_size {self.batch_size} does not split over {self.processes} processes")
        if not 0 < self.mlm_per_sample < self.text_len:
            raise ValueError("mlm_per_sample must be between 1 and text_len - 1")
        if self.vocab_size <= 5:
            raise ValueError("vocab_size must be > 5 (ids below 5 stand for special tokens)")

    @property
    def tokens(self) -> int:
        """Sequence length through the encoder: text + image [CLS] + patches."""
        return self.text_len + 1 + (self.image_size // self.patch_size) ** 2


def use_gpu(config: ScalingConfig) -> bool:
    return config.accelerator == "gpu" or (config.accelerator == "auto" and torch.cuda.is_available())


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_task(config: ScalingConfig) -> Any:
    """The shapes ViLT assembly (sizes from ``config``) in a PretrainTask with MLM + ITM."""
    from vlp.models.embedders.text import TextEmbedder
    from vlp.models.embedders.vit_patch import ViTPatchEmbedder
    from vlp.models.layers.heads import ITMHead, MLMHead
    from vlp.models.layers.transformer import TransformerEncoder
    from vlp.models.vilt import ViLT
    from vlp.objectives import ITMObjective, MLMObjective
    from vlp.tasks import PretrainTask

    torch.manual_seed(config.seed)
    model = ViLT(
        TextEmbedder(vocab_size=config.vocab_size, dim=config.dim, max_len=config.text_len),
        ViTPatchEmbedder(
            dim=config.dim,
            patch_size=config.patch_size,
            pos_grid=config.image_size // config.patch_size,
            pre_norm=True,
        ),
        TransformerEncoder(dim=config.dim, depth=config.depth, num_heads=config.num_heads),
    )
    objectives = {
        "mlm": MLMObjective(MLMHead(config.dim, vocab_size=config.vocab_size)),
        "itm": ITMObjective(ITMHead(config.dim)),
    }
    return PretrainTask(model, objectives, lr=1e-4, warmup=0.1)


def synthetic_batch(config: ScalingConfig, size: int, seed: int) -> Any:
    """Random pixels and token ids with ``mlm_per_sample`` labelled positions per sample."""
    from vlp.batch import Batch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (size, config.text_len), generator=generator)
    labels = torch.full_like(ids, -100)
    positions = torch.rand(size, config.text_len - 1, generator=generator).argsort(1)[
        :, : config.mlm_per_sample
    ]
    positions = positions + 1  # never the first ([CLS]) token
    labels.scatter_(1, positions, ids.gather(1, positions))
    masked = ids.scatter(1, positions, 4)  # one stand-in [MASK] id
    itm_labels = torch.randint(0, 2, (size,), generator=generator)
    rows = torch.arange(size)
    partner = (rows + torch.randint(1, size, (size,), generator=generator)) % size
    side = config.image_size
    return Batch(
        keys=[str(i) for i in range(size)],
        pixels=torch.randn(size, 3, side, side, generator=generator),
        pixel_mask=torch.ones(size, side, side, dtype=torch.bool),
        text_ids=ids,
        text_mask=torch.ones(size, config.text_len, dtype=torch.bool),
        mlm_text_ids=masked,
        mlm_labels=labels,
        itm_labels=itm_labels,
        itm_image_index=torch.where(itm_labels == 1, rows, partner),
    )


class RepeatedBatch(torch.utils.data.Dataset):
    """The same pre-built batch ``length`` times (``DataLoader(..., batch_size=None)``)."""

    def __init__(self, batch: Any, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.batch


def run_worker(setup: Setup, config: ScalingConfig, result: Path) -> None:
    """One setup: train ``warmup + steps`` steps under Lightning and time the last ``steps`` on rank 0."""
    gpu = use_gpu(config)
    processes = 1 if setup == "single" else config.processes
    if not gpu:
        torch.set_num_threads(max(1, (config.threads or available_cpus()) // processes))
    timer = step_timer(config, gpu)
    trainer = worker_trainer(setup, config, processes, gpu, timer)
    task = build_task(config)
    per_rank = config.batch_size // processes
    batch = synthetic_batch(config, per_rank, config.seed + 1 + trainer.global_rank)
    loader = torch.utils.data.DataLoader(
        RepeatedBatch(batch, config.warmup + config.steps), batch_size=None, shuffle=False
    )
    trainer.fit(task, train_dataloaders=loader)
    peak_memory = peak_memory_mib(trainer, gpu)
    if trainer.is_global_zero:
        record = {
            "setup": setup,
            "processes": processes,
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if gpu else cpu_name(),
            "seconds": timer.elapsed,
            "samples_per_s": config.batch_size * config.steps / timer.elapsed,
            "step_ms": 1000 * timer.elapsed / config.steps,
            "peak_memory_mib": peak_memory,
            "parameters": sum(p.numel() for p in task.parameters()),
        }
        result.write_text(json.dumps(record))
    if torch.distributed.is_initialized():
        # End gloo / NCCL before the interpreter does: exiting with the process group alive can abort the
        # process ("terminate called without an active exception") after the run itself succeeded.
        torch.distributed.destroy_process_group()


def step_timer(config: ScalingConfig, gpu: bool) -> Any:
    """A callback whose ``elapsed`` is the seconds of the steps after the first ``warmup`` (GPU synced)."""
    from lightning import Callback, Trainer

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.start = 0.0
            self.elapsed = 0.0

        def on_train_batch_start(self, trainer: Trainer, module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == config.warmup:
                if gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                self.start = time.perf_counter()

        def on_train_batch_end(
            self, trainer: Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if batch_idx == config.warmup + config.steps - 1:
                if gpu:
                    torch.cuda.synchronize()
                self.elapsed = time.perf_counter() - self.start

    return StepTimer()


def worker_trainer(setup: Setup, config: ScalingConfig, processes: int, gpu: bool, timer: Any) -> Any:
    """The setup's Lightning Trainer: ``processes`` devices, its strategy, no logging or validation."""
    from lightning import Trainer
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy: str | ModelParallelStrategy = "auto" if setup == "single" else "ddp"
    if setup == "fsdp":
        strategy = ModelParallelStrategy(data_parallel_size=processes, tensor_parallel_size=1)
    return Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=processes,
        strategy=strategy,
        precision=config.precision,
        max_steps=config.warmup + config.steps,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
    )


def peak_memory_mib(trainer: Any, gpu: bool) -> float:
    """The ranks' largest peak memory in MiB (GPU allocated, or peak RSS); every rank must call it."""
    if gpu:
        memory = torch.cuda.max_memory_allocated() / 2**20
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    memories = [memory]
    if trainer.world_size > 1:
        memories = [0.0] * trainer.world_size
        torch.distributed.all_gather_object(memories, memory)
    return max(memories)


def run_setup(setup: Setup, config: ScalingConfig, workdir: Path, timeout: float) -> dict[str, Any]:
    """Launch one setup as ``python -m vlp.bench.scaling --worker``; return its record."""
    result = workdir / f"{setup}.json"
    processes = 1 if setup == "single" else config.processes
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS}
    if not use_gpu(config):
        env["OMP_NUM_THREADS"] = str(max(1, (config.threads or available_cpus()) // processes))
    command = [
        sys.executable, "-m", "vlp.bench.scaling", "--worker", setup,
        "--config_json", json.dumps(asdict(config)), "--result", str(result),
    ]  # fmt: skip
    # A session of its own: on a timeout the ranks Lightning spawned are ended with the first one.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=workdir,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise RuntimeError(f"bench scaling: setup {setup!r} took longer than {timeout} s") from None
    if process.returncode != 0 or not result.exists():
        raise RuntimeError(f"bench scaling: setup {setup!r} failed:\n{stderr[-4000:]}")
    return json.loads(result.read_text())


def markdown(config: ScalingConfig, records: list[dict[str, Any]], command: str) -> str:
    """A section for benchmarks/RESULTS.md: the command, the set-up, and one row per strategy."""
    import lightning

    gpu = use_gpu(config)
    base = next((r["samples_per_s"] for r in records if r["setup"] == "single"), None)
    memory = "peak GPU memory / process (MiB)" if gpu else "peak RSS / process (MiB)"
    unit = "GPU" if gpu else "threads"
    params = records[0]["parameters"] / 1e6 if records else 0.0
    timing = f"{config.steps} timed steps after {config.warmup} warm-up"
    if config.repeats > 1:
        timing += f", best of {config.repeats} interleaved runs"
    device = records[0]["device"] if records else ""
    lines = [
        f"`{command}`",
        "",
        f"ViLT width {config.dim}, {config.depth} layers, {config.tokens} tokens "
        f"({config.text_len} text + {config.tokens - config.text_len} image), {params:.1f} M parameters; "
        f"MLM ({config.mlm_per_sample} labels/sample) + ITM, AdamW; global batch {config.batch_size}; "
        f"{config.precision}; {timing}; torch {torch.__version__}, lightning {lightning.__version__}, {device}.",
        "",
        f"| setup | processes | {unit} / process | samples/s | step (ms) | vs 1 process | {memory} | all runs (samples/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        per_process = 1 if gpu else r["threads"]
        lines.append(
            f"| {SETUP_TITLES[r['setup']]} | {r['processes']} | {per_process} | {r['samples_per_s']:.1f} | "
            f"{r['step_ms']:.0f} | {ratio} | {r['peak_memory_mib']:.0f} | "
            + ", ".join(f"{v:.1f}" for v in r.get("all_samples_per_s", [r["samples_per_s"]]))
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """Parse ``python -m vlp bench scaling`` options, run every setup, print the table."""
    timeout = {"type": float, "default": 1800.0, "help": "seconds allowed per setup"}
    config, args = parse_options("scaling", ScalingConfig, __doc__, argv, extra={"--timeout": timeout})
    gpu = use_gpu(config)
    if gpu and torch.cuda.device_count() < config.processes and set(config.setups) - {"single"}:
        raise SystemExit(
            f"{torch.cuda.device_count()} GPU(s) for {config.processes} processes: pass --processes or --setups"
        )
    command = command_line("scaling", argv)
    runs: dict[str, list[dict[str, Any]]] = {setup: [] for setup in config.setups}
    with tempfile.TemporaryDirectory(prefix="vlp-bench-") as workdir:
        for repeat in range(config.repeats):
            for setup in config.setups:
                record = run_setup(setup, config, Path(workdir), args.timeout)
                runs[setup].append(record)
                print(
                    f"{setup:<7s} run {repeat + 1}/{config.repeats}: {record['samples_per_s']:.1f} samples/s",
                    flush=True,
                )
    records = [max(runs[setup], key=lambda r: r["samples_per_s"]) for setup in config.setups]
    for record in records:
        record["all_samples_per_s"] = [r["samples_per_s"] for r in runs[record["setup"]]]
    publish(markdown(config, records, command), args.out)


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlp.bench.scaling")
    parser.add_argument("--worker", choices=list(SETUP_TITLES), required=True)
    parser.add_argument("--config_json", required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    run_worker(args.worker, ScalingConfig(**json.loads(args.config_json)), args.result)
    # The measurement is written; leave without the interpreter's teardown, where the 2-process FSDP2 run
    # on gloo sometimes aborted ("terminate called without an active exception", status -6) after a
    # complete run, even with its process group destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    worker_main(sys.argv[1:])
