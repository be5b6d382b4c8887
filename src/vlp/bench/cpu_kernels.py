"""``python -m vlp bench cpu-kernels``: the two kernel choices behind vlp's CPU training speed.

1. **Attention.** Forward + backward of ``F.scaled_dot_product_attention`` with PyTorch's fused CPU
   kernel (``FLASH_ATTENTION``, what SDPA picks on CPU) and with its unfused ``MATH`` backend, and of
   vlp's explicit path (:func:`vlp.models.layers.attention.explicit_attention`: matmuls and softmax in the inputs'
   dtype), in fp32 and bf16, at the 16-px shapes model's size (batch 32, 4 heads, 46 tokens, head
   width 32) and at ViLT-B/32's (batch 8, 12 heads, 185 tokens, head width 64), with a key-padding
   mask. :func:`vlp.models.layers.attention.sdpa` takes the explicit path for bf16/fp16 on CPU because of these.
2. **AdamW implementation.** One optimiser step over the parameters of the 16-px shapes model
   (tiny ViLT + MLM head: two 30522 x 128 matrices dominate) with the for-loop, ``foreach`` and
   ``fused`` implementations. :func:`vlp.tasks.optim.build_adamw` uses ``fused``.

Before timing, each pair of alternatives is checked to compute the same thing (attention outputs within
bf16 rounding; AdamW parameters equal after a step) and the run stops otherwise. Medians over
``steps`` timed repetitions after ``warmup``; alternatives are interleaved. The last line is
``bf16 attention speedup of vlp's path over SDPA's default: S`` at the first shape.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from vlp.bench.command import command_line, cpu_features, cpu_name, parse_options, publish
from vlp.models.layers.attention import explicit_attention
from vlp.tasks.optim import ADAMW_IMPLEMENTATIONS

ATTENTION = ("flash", "math", "explicit")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class CpuKernelsConfig:
    """What to measure.

    Args:
        shapes: attention sizes ``[batch, heads, tokens, head_dim]``; the last 5 keys of every
            sequence are padding.
        param_shapes: AdamW parameter shapes; ``None`` builds the 16-px shapes model and uses its.
        steps: timed repetitions per alternative; warmup: untimed ones before them.
        threads: torch threads (``None``: torch's default).
    """

    shapes: list[list[int]] = field(default_factory=lambda: [[32, 4, 46, 32], [8, 12, 185, 64]])
    param_shapes: list[list[int]] | None = None
    steps: int = 20
    warmup: int = 3
    threads: int | None = None

    def __post_init__(self) -> None:
        for shape in self.shapes:
            if len(shape) != 4 or min(shape) < 1 or shape[2] <= 5:
                raise ValueError(f"shapes: {shape} is not [batch, heads, tokens > 5, head_dim]")
        if self.steps < 1 or self.warmup < 0:
            raise ValueError(f"steps must be >= 1 and warmup >= 0, got {self.steps}, {self.warmup}")


def shapes_model_param_shapes() -> list[list[int]]:
    """Parameter shapes of configs/model/vilt_shapes_p16.yaml's model and the MLM/ITM heads."""
    from vlp.models.embedders import ViTPatchEmbedder
    from vlp.models.embedders.text import TextEmbedder
    from vlp.models.layers.heads import ITMHead, MLMHead
    from vlp.models.layers.transformer import TransformerEncoder
    from vlp.models.vilt import ViLT

    model = ViLT(
        TextEmbedder(vocab_size=30522, dim=128, max_len=40),
        ViTPatchEmbedder(dim=128, patch_size=16, pos_grid=4, max_image_len=-1, pre_norm=True),
        TransformerEncoder(dim=128, depth=4, num_heads=4, mlp_ratio=4.0),
    )
    modules = [model, MLMHead(dim=128, vocab_size=30522), ITMHead(dim=128)]
    return [list(p.shape) for m in modules for p in m.parameters()]


def attention_step(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Forward + backward of one attention (``kind`` from :data:`ATTENTION`); returns the output."""
    for t in (q, k, v):
        t.grad = None
    if kind == "explicit":
        out = explicit_attention(q, k, v, attn_mask=mask)
    else:
        backend = SDPBackend.FLASH_ATTENTION if kind == "flash" else SDPBackend.MATH
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.float().square().mean().backward()
    return out.detach()


def attention_inputs(shape: list[int], dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=gen).to(dtype).requires_grad_() for _ in range(3))
    mask = torch.ones(shape[0], 1, 1, shape[2], dtype=torch.bool)
    mask[..., -5:] = False
    return q, k, v, mask


def interleaved(fns: dict[str, Callable[[], Any]], steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each function, calls alternating between them."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure_attention(config: CpuKernelsConfig) -> list[dict[str, Any]]:
    rows = []
    for shape in config.shapes:
        for dtype_name, dtype in DTYPES.items():
            q, k, v, mask = attention_inputs(shape, dtype)
            outs = {kind: attention_step(q, k, v, mask, kind).float() for kind in ATTENTION}
            diff = max((outs[kind] - outs["flash"]).abs().max().item() for kind in ATTENTION)
            if diff > (3e-2 if dtype != torch.float32 else 1e-4):
                raise RuntimeError(
                    f"bench cpu-kernels: attention paths disagree by {diff} at {shape} {dtype_name}"
                )
            inputs = (q, k, v, mask)
            medians = interleaved(
                {kind: (lambda x=inputs, c=kind: attention_step(*x, c)) for kind in ATTENTION},
                config.steps,
                config.warmup,
            )
            rows.append({"shape": shape, "dtype": dtype_name, "max_diff": diff, **medians})
    return rows


def measure_adamw(config: CpuKernelsConfig) -> tuple[int, dict[str, float]]:
    shapes = config.param_shapes if config.param_shapes is not None else shapes_model_param_shapes()
    gen = torch.Generator().manual_seed(0)
    initial = [torch.randn(*s, generator=gen) for s in shapes]
    grads = [torch.randn(*s, generator=gen) for s in shapes]
    sides = {}
    for name, kwargs in ADAMW_IMPLEMENTATIONS.items():
        params = [torch.nn.Parameter(p.clone()) for p in initial]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        sides[name] = (params, torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, **kwargs))
    for _, optimizer in sides.values():
        optimizer.step()
    reference = sides["for-loop"][0]
    for name, (params, _) in sides.items():
        worst = max((a - b).abs().max().item() for a, b in zip(params, reference, strict=True))
        if worst > 1e-6:
            raise RuntimeError(
                f"bench cpu-kernels: AdamW {name} differs from for-loop by {worst} after one step"
            )
    medians = interleaved({name: opt.step for name, (_, opt) in sides.items()}, config.steps, config.warmup)
    return sum(p.numel() for p in initial), medians


def markdown(
    config: CpuKernelsConfig,
    attention: list[dict[str, Any]],
    adamw: tuple[int, dict[str, float]],
    command: str,
) -> str:
    """A section for benchmarks/RESULTS.md; its last line is the bf16 attention speedup at the first shape.

    "vlp's path" is what :func:`vlp.models.layers.attention.sdpa` runs: explicit in bf16, SDPA's default in fp32.
    """
    lines = [
        f"`{command}`",
        "",
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {cpu_name()} ({cpu_features()}); medians of "
        f"{config.steps} interleaved repetitions after {config.warmup} warm-up.",
        "",
        "| attention [B, H, N, d] | dtype | SDPA flash ms | SDPA math ms | vlp explicit ms | vlp's path vs flash "
        "| max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in attention:
        ours = row["explicit"] if row["dtype"] == "bf16" else row["flash"]
        lines.append(
            f"| {row['shape']} | {row['dtype']} | {1000 * row['flash']:.2f} | {1000 * row['math']:.2f} | "
            f"{1000 * row['explicit']:.2f} | {row['flash'] / ours:.2f}x | {row['max_diff']:.1e} |"
        )
    numel, medians = adamw
    lines += ["", f"| AdamW step over {numel / 1e6:.2f} M parameters | ms | vs for-loop |", "|---|---|---|"]
    for name, seconds in medians.items():
        lines.append(f"| {name} | {1000 * seconds:.2f} | {medians['for-loop'] / seconds:.2f}x |")
    first_bf16 = next(r for r in attention if r["dtype"] == "bf16")
    speedup = first_bf16["flash"] / first_bf16["explicit"]
    lines += ["", f"bf16 attention speedup of vlp's path over SDPA's default: {speedup:.2f}"]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Parse the options, check the alternatives agree, time them, print the table."""
    config, args = parse_options("cpu-kernels", CpuKernelsConfig, __doc__, argv, set_threads=True)
    section = markdown(
        config, measure_attention(config), measure_adamw(config), command_line("cpu-kernels", argv)
    )
    publish(section, args.out)
