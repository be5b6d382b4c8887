"""``python -m vlp bench sparse-attention``: ERNIE-ViLG's sparse attention against dense, same masks.

What runs: stacks of :class:`~vlp.models.ernie_vilg.sparse_attention.SparseSelfAttention` layers (fused ``qkv``
projection, attention, output projection; ``x = x + attn(x)`` per layer, no MLP or norm, so the figure
is the attention layer) over ``text_len`` text tokens and a ``grid x grid`` image, batch
``batch_size``, in fp32 or under bf16 autocast (``--precision bf16-mixed``, as the shapes recipe trains), in
the direction given (default text→image: text = source, image = causal target). Every second sample has
its last quarter of text padded. Setups:

- ``row``, ``column``, ``conv``: one layer of that pattern, blocked and dense;
- ``schedule``: ``depth`` layers of the paper's schedule
  (:func:`~vlp.models.ernie_vilg.sparse_patterns.ernie_vilg_schedule`; depth 4: row, row, column, conv), in every
  row below.

The rows (the ``attention`` column), all with the same weights:

- ``blocked``: :class:`~vlp.models.ernie_vilg.sparse_attention.SparseSelfAttention` as it is built by default:
  the blocked kernels, backward attends again chunk by chunk and regenerates the fused ``qkv`` from the
  layer input (``recompute=True, recompute_qkv=True``), so a layer keeps its input and the small masks;
- ``blocked (qkv kept)`` (schedule only): the same with ``recompute_qkv=False``: a layer also keeps
  ``qkv`` (three times its input), and backward skips the ``qkv`` matmul; the price of that option;
- ``blocked (no recompute)`` (schedule only): ``recompute=False``: autograd keeps the gathered blocks and
  every intermediate, and backward attends nothing again; what the recomputation costs in time;
- ``dense``: ``implementation="dense"``: one SDPA call with the full ``[B, 1, N, N]`` mask of the same
  pattern (on CPU torch picks its fused flash kernel, which keeps no ``[N, N]`` scores; only the mask is
  quadratic), autograd keeping what it keeps (input, ``qkv``, the output, the projection's input, the
  mask as float, the log-sum-exp). The reference of the ``vs dense`` columns and of the last two lines;
- ``dense (checkpointed)`` (schedule only): the dense layers, each wrapped in
  ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``: dense given the same recompute trick (a
  layer keeps its input; backward runs its forward again), what dense pays in time for blocked's memory;
- ``dense (math)`` (schedule only, with ``--math_reference``): dense on SDPA's math backend, which
  materialises the scores as 2021 attention did (the paper's baseline); context.

Before timing, blocked and dense outputs of every setup must agree (same weights, same input; to 1e-4 in
fp32, to 5e-2 under bf16 autocast, where the two sum the same products in different orders and round
partial results to bf16's 8 significant bits), else the run stops. One step is forward + backward of
``sum(out)`` from a fresh input; steps of all setups are interleaved (the order reversed every other
round) after untimed warm-up rounds, and the table gives medians. Peak memory is measured in one
further step per setup under ``torch.profiler`` with ``profile_memory``: the maximum, over the step, of
tensor bytes allocated minus freed since the step began (every CPU allocation goes through torch's
allocator and is recorded), so parameters and the input are not counted and the figure does not depend
on how glibc keeps freed pages.

The last two lines are ``speedup: S`` (dense schedule's median time ÷ blocked schedule's) and
``memory: M`` (blocked schedule's peak ÷ dense schedule's peak); the line before them gives the same two
ratios against ``dense (checkpointed)``.

Threads: the blocked kernels run some tens of small parallel regions per layer where dense runs one
big SDPA call. On a host whose cores other processes also use, OpenMP's spinning barrier waits make
every region expensive and the time column then measures contention: pass ``--threads 1`` or set
``OMP_WAIT_POLICY=PASSIVE`` there (on this project's shared 2-core machine the blocked schedule went
from 0.9x dense with 2 spinning threads to 1.7x with passive waits and 1.8x with one thread).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from vlp.bench.command import command_line, cpu_name, parse_options, publish
from vlp.models.ernie_vilg.sparse_attention import DEFAULT_CHUNKS, SparseSelfAttention
from vlp.models.ernie_vilg.sparse_blocks import DEFAULT_BLOCK
from vlp.models.ernie_vilg.sparse_patterns import ImageTextLayout, ernie_vilg_schedule

SINGLE_PATTERNS = ("row", "column", "conv")
PRECISION_TEXT = {"32-true": "fp32", "bf16-mixed": "bf16 autocast"}


@dataclass
class SparseAttentionConfig:
    """What to measure. Defaults: ERNIE-ViLG's sequence (64 text + 32 x 32 image codes), width 512.

    Args:
        batch_size, dim, num_heads: the attention layer.
        text_len: text tokens; grid: the image is ``grid x grid`` codes.
        depth: layers of the paper-schedule stack.
        direction: ``text_to_image`` (image = causal target) or ``image_to_text``.
        kernel_size: the ``conv`` window.
        steps: timed steps per setup; warmup: untimed rounds before them.
        threads: torch threads (``None``: torch's default).
        math_reference: also run the schedule dense on SDPA's math backend (scores materialised).
        precision: ``32-true`` or ``bf16-mixed`` (every step under CPU bf16 autocast).
    """

    batch_size: int = 2
    dim: int = 512
    num_heads: int = 8
    text_len: int = 64
    grid: int = 32
    depth: int = 4
    direction: Literal["text_to_image", "image_to_text"] = "text_to_image"
    kernel_size: int = 5
    steps: int = 5
    warmup: int = 1
    threads: int | None = None
    math_reference: bool = True
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.batch_size, self.dim, self.num_heads, self.grid, self.depth, self.steps) < 1:
            raise ValueError("batch_size, dim, num_heads, grid, depth and steps must be >= 1")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.text_len < 0 or self.warmup < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError("text_len and warmup must be >= 0, threads >= 1")


class AttentionStack(nn.Module):
    """``x = x + layer(x, layout)`` for each layer: the attention layers alone, residual between them.

    ``checkpointed``: each ``layer(x, layout)`` runs under ``torch.utils.checkpoint.checkpoint``
    (non-reentrant), keeping its input only and running again in backward.
    """

    def __init__(self, layers: list[SparseSelfAttention], checkpointed: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.checkpointed = checkpointed

    def forward(self, x: Tensor, layout: ImageTextLayout) -> Tensor:
        for layer in self.layers:
            if self.checkpointed and torch.is_grad_enabled():
                x = x + checkpoint(layer, x, layout, use_reentrant=False)
            else:
                x = x + layer(x, layout)
        return x


@dataclass
class Setup:
    """One contender: a stack, how it attends, and the context its steps run in."""

    name: str
    stack: AttentionStack
    attention: str
    backend: Callable[[], AbstractContextManager[Any]] = nullcontext
    autocast: bool = False

    @contextmanager
    def context(self) -> Iterator[None]:
        """The setup's SDPA backend, under CPU bf16 autocast when the run is ``bf16-mixed``."""
        with self.backend(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            yield


def make_layout(config: SparseAttentionConfig) -> ImageTextLayout:
    """The benchmark's layout: every second sample has the last quarter of its text padded."""
    base = ImageTextLayout(config.text_len, (config.grid, config.grid), config.direction)
    key_mask = torch.ones(config.batch_size, base.length, dtype=torch.bool)
    padded = config.text_len // 4
    if padded:
        end = base.text_start + config.text_len
        key_mask[1::2, end - padded : end] = False
    return ImageTextLayout(config.text_len, base.grid, config.direction, key_mask=key_mask)


def make_setups(config: SparseAttentionConfig) -> list[Setup]:
    """Blocked and dense stacks (same weights) per single pattern and for the paper's schedule; for the
    schedule also blocked keeping ``qkv``, checkpointed dense and (``math_reference``) math dense."""
    torch.manual_seed(config.seed)
    schedules = {kind: [kind] for kind in SINGLE_PATTERNS}
    schedules["schedule"] = ernie_vilg_schedule(config.depth)
    setups = []
    for name, kinds in schedules.items():
        blocked = AttentionStack(
            [
                SparseSelfAttention(config.dim, config.num_heads, kind, kernel_size=config.kernel_size)
                for kind in kinds
            ]
        )
        dense = copy.deepcopy(blocked)
        for layer in dense.layers:
            layer.implementation = "dense"
        if name != "schedule":
            setups += [Setup(name, blocked, "blocked"), Setup(name, dense, "dense")]
            continue
        kept = copy.deepcopy(blocked)
        for layer in kept.layers:
            layer.recompute_qkv = False
        stored = copy.deepcopy(blocked)
        for layer in stored.layers:
            layer.recompute = False
        checkpointed = AttentionStack(list(dense.layers), checkpointed=True)  # the dense stack's layers
        setups += [
            Setup(name, blocked, "blocked"),
            Setup(name, kept, "blocked (qkv kept)"),
            Setup(name, stored, "blocked (no recompute)"),
            Setup(name, dense, "dense"),
            Setup(name, checkpointed, "dense (checkpointed)"),
        ]
        if config.math_reference:
            setups.append(Setup(name, dense, "dense (math)", lambda: sdpa_kernel(SDPBackend.MATH)))
    for setup in setups:
        setup.autocast = config.precision == "bf16-mixed"
    return setups


def clear_grads(setup: Setup) -> None:
    for parameter in setup.stack.parameters():
        parameter.grad = None


def step(setup: Setup, x: Tensor, layout: ImageTextLayout) -> None:
    """Forward and backward of ``sum(out)`` from a fresh leaf input (gradients cleared beforehand)."""
    with setup.context():
        setup.stack(x.clone().requires_grad_(), layout).float().sum().backward()


def check_agreement(setups: list[Setup], x: Tensor, layout: ImageTextLayout) -> float:
    """Largest difference between a setup's blocked and dense outputs; stops the run if they disagree
    (beyond 1e-4 in fp32, 5e-2 under bf16 autocast: module docstring)."""
    tolerance = 5e-2 if any(setup.autocast for setup in setups) else 1e-4
    worst = 0.0
    with torch.no_grad():
        outputs = {}
        for setup in setups:
            with setup.context():
                outputs[(setup.name, setup.attention)] = setup.stack(x, layout).float()
    for (name, attention), out in outputs.items():
        if attention == "blocked":
            continue
        blocked = outputs[(name, "blocked")]
        difference = float((out - blocked).abs().max())
        if not torch.allclose(out, blocked, atol=tolerance, rtol=tolerance):
            raise RuntimeError(
                f"bench sparse-attention: {name} blocked and {attention} outputs differ by {difference:.3g}; "
                "the timings would not compare the same computation"
            )
        worst = max(worst, difference)
    return worst


def time_steps(
    config: SparseAttentionConfig, setups: list[Setup], x: Tensor, layout: ImageTextLayout
) -> list[list[float]]:
    """Seconds per step of each setup, all setups interleaved, order reversed every other round."""
    times: list[list[float]] = [[] for _ in setups]
    for round_ in range(config.warmup + config.steps):
        order = list(range(len(setups)))
        for index in order if round_ % 2 == 0 else reversed(order):
            clear_grads(setups[index])
            start = time.perf_counter()
            step(setups[index], x, layout)
            if round_ >= config.warmup:
                times[index].append(time.perf_counter() - start)
    return times


def peak_memory(fn: Callable[[], None]) -> int:
    """Peak bytes of live tensors allocated by ``fn`` (allocations minus frees, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def markdown(
    config: SparseAttentionConfig,
    setups: list[Setup],
    times: list[list[float]],
    peaks: list[int],
    agreement: float,
    layout: ImageTextLayout,
    command: str,
) -> str:
    """The report; its last two lines are ``speedup: S`` and ``memory: M``."""
    medians = [statistics.median(t) for t in times]
    reference = {s.name: i for i, s in enumerate(setups) if s.attention == "dense"}
    padded = config.text_len // 4
    lines = [
        f"`{command}`",
        "",
        f"Attention layers only (fused qkv + attention + projection, residual between layers, no MLP), "
        f"width {config.dim}, {config.num_heads} heads, batch {config.batch_size}, {layout.length} tokens "
        f"({config.text_len} text, the last {padded} padded in every second sample, + "
        f"{config.grid}x{config.grid} image), {config.direction.replace('_', ' ')}, {PRECISION_TEXT[config.precision]}; conv window "
        f"{config.kernel_size}x{config.kernel_size}; blocks {DEFAULT_BLOCK} (rows / columns / tile side), "
        f"blocked backward recomputes the attention in {DEFAULT_CHUNKS} chunks of blocks and regenerates "
        f"qkv from the layer input (a layer keeps its input; with qkv kept, its input and qkv); "
        f"schedule = {', '.join(ernie_vilg_schedule(config.depth))}. "
        f"One step = forward + backward; median of {config.steps} interleaved steps per setup after "
        f"{config.warmup} warm-up round(s). Peak = most tensor bytes live during one step (torch.profiler "
        f"allocation events). Blocked and dense outputs agree to {agreement:.1e}. torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {cpu_name()}.",
        "",
        "| setup | layers | attention | median ms | quartiles (ms) | vs dense | peak MiB | vs dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, setup in enumerate(setups):
        dense = reference[setup.name]
        quartiles = (
            statistics.quantiles(times[index], n=4, method="inclusive")
            if len(times[index]) > 1
            else [medians[index]] * 3
        )
        lines.append(
            f"| {setup.name} | {len(setup.stack.layers)} | {setup.attention} | {1000 * medians[index]:.0f} | "
            f"{1000 * quartiles[0]:.0f}-{1000 * quartiles[2]:.0f} | {medians[dense] / medians[index]:.2f}x | "
            f"{peaks[index] / 2**20:.1f} | {peaks[index] / peaks[dense]:.2f} |"
        )
    schedule = {s.attention: i for i, s in enumerate(setups) if s.name == "schedule"}
    blocked, dense = schedule["blocked"], schedule["dense"]
    checkpointed = schedule["dense (checkpointed)"]
    lines += [
        "",
        f"against dense (checkpointed): speedup {medians[checkpointed] / medians[blocked]:.2f}, "
        f"memory {peaks[blocked] / peaks[checkpointed]:.2f}",
        f"speedup: {medians[dense] / medians[blocked]:.2f}",
        f"memory: {peaks[blocked] / peaks[dense]:.2f}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Parse the options, check blocked == dense, time and measure every setup, print the report."""
    config, args = parse_options("sparse-attention", SparseAttentionConfig, __doc__, argv, set_threads=True)
    layout = make_layout(config)
    setups = make_setups(config)
    x = torch.randn(config.batch_size, layout.length, config.dim, generator=torch.Generator().manual_seed(1))
    agreement = check_agreement(setups, x, layout)
    times = time_steps(config, setups, x, layout)
    peaks = []
    for setup in setups:
        clear_grads(setup)
        peaks.append(peak_memory(lambda s=setup: step(s, x, layout)))
    command = command_line("sparse-attention", argv)
    publish(markdown(config, setups, times, peaks, agreement, layout, command), args.out)
