"""Page faults and kernel time of ``bench vilt``'s training step, per model, with and without vlp.allocator.

Builds both sides of ``python -m vlp bench vilt`` (vlp's ViLT-B/32 and transformers' ViLT, same weights,
batch 8, MLM + ITM, AdamW) and runs warm-up steps, then interleaved steps, printing for each step the
minor page faults and the user and system CPU time of the calling thread (``getrusage(RUSAGE_THREAD)``:
one torch thread, so the thread does all the work). ``VLP_KEEP_FREED_MEMORY=1`` applies
:func:`vlp.allocator.keep_freed_memory` first, as ``python -m vlp`` does.

    VLP_KEEP_FREED_MEMORY=0 OMP_NUM_THREADS=1 python benchmarks/diagnostics/vilt_step_page_faults.py --precision bf16
    VLP_KEEP_FREED_MEMORY=1 OMP_NUM_THREADS=1 python benchmarks/diagnostics/vilt_step_page_faults.py --precision bf16
"""

from __future__ import annotations

import argparse
import resource

import torch

from vlp.allocator import configure_from_env
from vlp.bench.vilt import StepRunner, ViltBenchConfig, build_sides, make_batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    kept = configure_from_env()
    torch.set_num_threads(1)
    config = ViltBenchConfig()
    vlp, hf = build_sides(config)
    batch = make_batch(config, config.batch_size, config.seed + 1)
    runners = {
        "vlp": StepRunner("vlp", vlp, config, batch),
        "transformers": StepRunner("transformers", hf, config, batch),
    }
    for runner in runners.values():
        for _ in range(args.warmup):
            runner.step(args.precision)
    print(f"keep_freed_memory={kept} precision={args.precision}")
    for step in range(args.steps):
        for side, runner in runners.items():
            before = resource.getrusage(resource.RUSAGE_THREAD)
            runner.step(args.precision)
            after = resource.getrusage(resource.RUSAGE_THREAD)
            print(
                f"step {step} {side}: {after.ru_minflt - before.ru_minflt} minor faults, "
                f"user {after.ru_utime - before.ru_utime:.3f} s, sys {after.ru_stime - before.ru_stime:.3f} s"
            )


if __name__ == "__main__":
    main()
