"""Where ``bench vilt``'s training step spends its time: ``torch.profiler`` over vlp's (or transformers')
ViLT-B/32 step, the bench's own model, batch and AdamW, in one precision.

Prints the operators sorted by their own (self) CPU time, and the step's time split into forward,
backward and optimiser (the labels ``StepRunner.step`` sets), each as a share of the profiled wall time; ``--trace FILE`` also writes a
Chrome trace (open it in ``chrome://tracing`` or Perfetto).

    python benchmarks/diagnostics/profile_vilt_step.py                       # vlp, bf16
    python benchmarks/diagnostics/profile_vilt_step.py --side transformers --precision fp32
    python benchmarks/diagnostics/profile_vilt_step.py --rows 40 --trace /tmp/vilt_bf16.json
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from vlp.bench.vilt.batch import make_batch
from vlp.bench.vilt.config import ViltBenchConfig
from vlp.bench.vilt.step import StepRunner, build_sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("vlp", "transformers"), default="vlp")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after --warmup untimed ones)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--trace", default=None, help="write a Chrome trace here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = ViltBenchConfig(threads=args.threads, memory=False)
    torch.manual_seed(config.seed)
    vlp, hf = build_sides(config)
    module = vlp if args.side == "vlp" else hf
    runner = StepRunner(args.side, module, config, make_batch(config, config.batch_size, config.seed))
    for _ in range(args.warmup):
        runner.step(args.precision)

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            runner.step(args.precision)
    wall = (time.perf_counter() - start) / args.steps
    print(
        f"{args.side} {args.precision}: {wall * 1000:.0f} ms a step under the profiler ({args.steps} steps)"
    )
    events = prof.key_averages()
    parts = {
        event.key[3:]: event.cpu_time_total / 1000 / args.steps
        for event in events
        if event.key.startswith("## ")
    }
    for part, ms in parts.items():
        print(f"  {part:<10} {ms:8.1f} ms  {ms / (wall * 1000):6.1%}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(
        prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows)
    )
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"trace: {args.trace}")


if __name__ == "__main__":
    main()
