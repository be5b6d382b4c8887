"""``torch.compile`` of one block of each family (ViLT's encoder block, E2E-VLP's decoder layer, ERNIE-ViLG's
sparse and dense-pattern blocks): each traces as one graph, with no graph break, in fp32 (SDPA) and under
bf16 autocast (``vlp.models.layers.attention``'s explicit CPU path), and that one dynamic-shape graph serves
batches of another size, text length and image grid (a failure lists the breaks ``torch._dynamo.explain``
finds); compiled by inductor, outputs and gradients agree with eager ones. ERNIE-ViLG's sparse operator
passes ``torch.library.opcheck`` and replays its dropout in backward."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from vlp.models.ernie_vilg.sparse_attention import SparseSelfAttention
from vlp.models.ernie_vilg.sparse_patterns import ImageTextLayout
from vlp.models.layers.decoder import DecoderLayer, causal_mask
from vlp.models.layers.transformer import Block, key_padding_mask

DIM, HEADS = 32, 4


def vilt_inputs(size: int) -> tuple[Any, ...]:
    """``[text; image]`` tokens with padded keys; ``size`` 1 has another batch size and length."""
    batch, length = (2, 7) if size == 0 else (3, 10)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, -2:] = False
    return torch.randn(batch, length, DIM), key_padding_mask(mask)


def decoder_inputs(size: int) -> tuple[Any, ...]:
    """Caption tokens (causal, padded) against a padded memory."""
    batch, length, memory_len = (2, 5, 7) if size == 0 else (3, 6, 9)
    padding = torch.ones(batch, length, dtype=torch.bool)
    padding[1, -2:] = False
    memory_mask = torch.ones(batch, memory_len, dtype=torch.bool)
    memory_mask[0, -3:] = False
    x, memory = torch.randn(batch, length, DIM), torch.randn(batch, memory_len, DIM)
    return x, memory, key_padding_mask(memory_mask), causal_mask(length, length, x.device, padding)


def ernie_inputs(size: int) -> tuple[Any, ...]:
    """``[text; image codes]`` with padded text; ``size`` 1 has another batch, text length and grid."""
    batch, text_len, grid = (2, 5, (4, 4)) if size == 0 else (3, 3, (3, 5))
    layout = ImageTextLayout(text_len, grid, "text_to_image", True)
    key_mask = torch.ones(batch, layout.length, dtype=torch.bool)
    key_mask[1, text_len - 2 : text_len] = False
    return torch.randn(batch, layout.length, DIM), ImageTextLayout(
        text_len, grid, "text_to_image", True, key_mask
    )


def sparse_block(pattern: str) -> Block:
    return Block(
        DIM, HEADS, attn_layer=partial(SparseSelfAttention, pattern=pattern, kernel_size=3, context=1)
    )


FAMILIES: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[Any, ...]]]] = {
    "vilt_block": (lambda: Block(DIM, HEADS), vilt_inputs),
    "e2e_vlp_decoder_layer": (lambda: DecoderLayer(DIM, HEADS), decoder_inputs),
    "ernie_vilg_sparse_block": (lambda: sparse_block("conv"), ernie_inputs),
    "ernie_vilg_dense_block": (lambda: sparse_block("dense"), ernie_inputs),
}
PRECISIONS = ["fp32", "bf16"]


def autocast(precision: str) -> AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """Each test compiles from scratch: no cached graph or recompile count carried between tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class GraphCounter:
    """A ``torch.compile`` backend that runs each graph as traced and counts them."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        return graph.forward


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_block_traces_as_one_graph_for_every_size(family: str, precision: str) -> None:
    """One graph for two calls of different sizes: no graph break (each would start another graph) and
    no recompilation. fp32 runs SDPA and bf16 the explicit CPU attention (the two paths of ``sdpa``)."""
    make, inputs = FAMILIES[family]
    torch.manual_seed(0)
    block = make().train()
    counter = GraphCounter()
    compiled = torch.compile(block, backend=counter, dynamic=True)
    with autocast(precision):
        for size in (0, 1):
            compiled(*inputs(size)).float().sum().backward()
    if counter.graphs != 1:
        torch._dynamo.reset()
        with autocast(precision):
            explained = torch._dynamo.explain(block)(*inputs(0))
        breaks = [reason.reason for reason in explained.break_reasons]
        pytest.fail(f"{counter.graphs} graphs; {explained.graph_break_count} graph breaks: {breaks}")


def outputs_and_gradients(block: nn.Module, args: tuple[Any, ...], precision: str) -> list[Tensor]:
    """The block's output and the gradients of its float inputs and parameters, for a fixed upstream."""
    leaves = [
        a.detach().requires_grad_() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args
    ]
    with autocast(precision):
        out = block(*leaves)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    wanted = [a for a in leaves if isinstance(a, Tensor) and a.requires_grad] + list(block.parameters())
    grads = torch.autograd.grad(out.float(), wanted, upstream)
    return [out.detach().float(), *grads]


# fp32: both sides run the same math; inductor's fused kernels only reorder float reductions
FP32_TOL = {"rtol": 1e-4, "atol": 1e-5}
# bf16: inductor fuses ops and reorders float reductions, keeping intermediates the eager ops round to bf16
BF16_TOL = {"rtol": 5e-2, "atol": 5e-2}


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_inductor_compiled_block_agrees_with_eager(family: str, precision: str) -> None:
    make, inputs = FAMILIES[family]
    torch.manual_seed(0)
    eager = make().train()
    compiled = make().train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(backend="inductor", dynamic=True, fullgraph=True)
    tolerance = FP32_TOL if precision == "fp32" else BF16_TOL
    for size in (0, 1):
        torch.manual_seed(size)
        args = inputs(size)
        expected = outputs_and_gradients(eager, args, precision)
        got = outputs_and_gradients(compiled, args, precision)
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            scale = b.abs().max().clamp(min=1.0)  # gradients of unit-scale values: compare relative to it
            torch.testing.assert_close(a / scale, b / scale, **tolerance, msg=lambda m, i=index: f"{i}: {m}")


def sparse_op_args(dropout_p: float) -> tuple[Any, ...]:
    """The sparse operator's arguments for a padded ``conv`` layout: ``qkv [B, N, 3, H, d]`` first."""
    _, layout = ernie_inputs(0)
    qkv = torch.randn(2, layout.length, 3, HEADS, DIM // HEADS, requires_grad=True)
    geometry = (
        layout.text_len,
        list(layout.grid),
        layout.direction,
        layout.source_first,
        "conv",
        1,
        3,
        None,
        2,
    )
    return (qkv, layout.key_mask, *geometry, dropout_p)


def test_sparse_operator_passes_opcheck() -> None:
    """Its schema, fake (meta) function and autograd registration are what the compiler relies on."""
    from vlp.models.ernie_vilg.sparse_op import _forward_op

    torch.library.opcheck(_forward_op, sparse_op_args(0.0))


def test_sparse_operator_backward_replays_the_forward_dropout() -> None:
    """With attention dropout, the operator's gradient is that of the graph autograd keeps through the
    eager kernel under the same RNG state."""
    from vlp.models.ernie_vilg.sparse_kernels import blocked_forward
    from vlp.models.ernie_vilg.sparse_op import _forward_op, _masks

    args = sparse_op_args(0.3)
    qkv, key_mask, *geometry, dropout_p = args
    upstream = torch.randn(qkv.shape[0], qkv.shape[1], HEADS, DIM // HEADS)
    torch.manual_seed(5)
    out, _ = _forward_op(*args)
    (grad,) = torch.autograd.grad(out, qkv, upstream)
    torch.manual_seed(5)
    plan, text_mask, image_mask = _masks(qkv, key_mask, *geometry)
    kept = blocked_forward(qkv, text_mask, image_mask, plan, dropout_p)
    (expected,) = torch.autograd.grad(kept, qkv, upstream)
    torch.testing.assert_close(out, kept, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)  # chunked sums: another order
