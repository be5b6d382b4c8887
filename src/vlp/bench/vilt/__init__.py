"""``python -m vlp bench vilt``: vlp's ViLT against transformers' ViLT, the same training step, one run.

Both sides train the same step on the same batch: masked text (``mask_prob`` of the tokens carry an
MLM label, the same labels on both sides), ITM labels, the same images; MLM loss + ITM loss,
backward, an AdamW step (``torch.optim.AdamW``, one group, the same settings on both sides, fused
by default as transformers' ``Trainer`` uses it).

- **vlp**: :class:`~vlp.models.vilt.ViLT` with :class:`~vlp.objectives.MLMObjective` (the MLM head
  runs on the labelled positions only) and :class:`~vlp.objectives.ITMObjective`, as
  :class:`~vlp.tasks.PretrainTask` runs them: the last layer computes only the rows the two heads
  read (the labelled text rows and [CLS], ``ViLT(text_rows=...)``); below it every row is computed.
- **transformers**: ``ViltForMaskedLM``'s ``ViltModel`` and ``ViltMLMHead`` used as its ``forward``
  uses them (logits at every text position, ``CrossEntropyLoss`` over them), plus an ITM
  ``nn.Linear`` on the pooler output.

The configuration is identical: widths, depth, heads, MLP, patch size, every LayerNorm at
``eps=1e-12`` (``ViltConfig`` has one ``layer_norm_eps``), dropout 0 everywhere (``ViltConfig``'s
default), all ``(image_size / patch_size)**2`` patches (``max_image_length=-1``, no sampling), and
the MLM decoder tied to the word embeddings on both sides (``ViltConfig`` forces the tie; vlp's
recipes, like official ViLT, leave it untied). The transformers side is built first and its weights
are copied onto vlp's keys (q, k, v concatenated into ``qkv``), so both start from the same weights
and their first losses agree: the step-0 losses are printed.

Each precision starts again from those initial weights with a fresh optimiser, so the step-0
losses of the two precisions are comparable too. Timing: ``warmup`` untimed steps each, then
``steps`` timed steps each, interleaved (vlp, transformers, matmul; then transformers, vlp,
matmul; ...), medians reported. The matmul is a plain ``[768, 3072] @ [3072, 768]`` product in the
run's precision, timed in the same loop; each model's achieved FLOP/s (its own FLOPs per step,
counted once with ``FlopCounterMode``, forward + backward) is reported as a fraction of it. Inference latency: eval mode, ``no_grad``, batch 1, ITM score
(model + pooler + ITM linear), interleaved, median. Precisions: ``fp32`` and ``bf16`` (the same
step under ``torch.autocast("cpu", dtype=torch.bfloat16)``, weights and optimiser in fp32).

Peak memory: each (model, precision) trains ``memory_steps`` steps in a fresh subprocess
(``python -m vlp.bench.vilt --memory_worker ...``) that imports the same modules whatever it builds.
Reported are the process's peak resident set (``VmHWM``) and the step's part of it: the peak over
the steps (the high-water mark reset via ``/proc/self/clear_refs`` after the model is built) minus
the resident set before the first step, i.e. activations, gradients and AdamW state. Python's
``tracemalloc`` does not see torch's allocator, resident memory does.

With ``--compile true`` each side is also measured with every transformer block compiled in place
(:mod:`vlp.tasks.compile`: vlp's ``Block``, transformers' ``ViltLayer``, the same ``torch.compile``
settings), a copy starting from the same weights, as extra rows; the eager rows stay. A compiled copy
compiles during its warm-up steps (at least one is needed to keep compilation out of the timings).

The last line printed is ``ratio: R``, the lower over the precisions of vlp samples/s divided by
transformers samples/s, each side in its faster variant (eager or compiled) when ``--compile`` is on.
"""

from __future__ import annotations

from dataclasses import replace

from vlp.bench.command import command_line, parse_options, publish
from vlp.bench.vilt.batch import BenchBatch, make_batch
from vlp.bench.vilt.config import SIDES, SMOKE, ViltBenchConfig
from vlp.bench.vilt.measure import count_step_flops, run
from vlp.bench.vilt.memory import run_memory
from vlp.bench.vilt.report import markdown, ratios
from vlp.bench.vilt.step import StepRunner, build_sides
from vlp.bench.vilt.transformers_side import TransformersSide
from vlp.bench.vilt.vlp_side import VlpSide

__all__ = [
    "SIDES",
    "SMOKE",
    "BenchBatch",
    "StepRunner",
    "TransformersSide",
    "ViltBenchConfig",
    "VlpSide",
    "build_sides",
    "count_step_flops",
    "main",
    "make_batch",
    "markdown",
    "ratios",
    "run",
    "run_memory",
]


def main(argv: list[str]) -> None:
    """Parse ``python -m vlp bench vilt`` options, measure, print the table and ``ratio: R`` last."""
    extra = {
        "--smoke": {"type": bool, "default": False, "help": "tiny sizes, 2 steps, no memory runs (tests)"},
        "--timeout": {"type": float, "default": 1800.0, "help": "seconds allowed per memory subprocess"},
    }
    config, args = parse_options("vilt", ViltBenchConfig, __doc__, argv, extra=extra)
    if args.smoke:
        config = replace(config, **SMOKE)
    report = run(config, args.timeout, log=lambda text: print(text, flush=True))
    publish(markdown(config, report, command_line("vilt", argv)), args.out)
    by_precision = ratios(report)
    print(", ".join(f"{precision} ratio: {value:.3f}" for precision, value in by_precision.items()))
    print(f"ratio: {min(by_precision.values()):.3f}")
