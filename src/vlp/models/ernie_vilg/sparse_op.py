"""The blocked sparse attention as one PyTorch custom operator, the form ``torch.compile`` traces.

The eager kernels plan their blocks with Python control flow on index tensors
(:func:`~vlp.models.ernie_vilg.sparse_blocks.block_plan`, cached per geometry) and differentiate by
recomputation in an ``autograd.Function`` whose backward calls autograd itself; neither can be traced
into one graph. Under ``torch.compile``, :class:`~vlp.models.ernie_vilg.sparse_attention.SparseSelfAttention`
calls :func:`blocked_sparse_attention` instead: an operator opaque to the compiler (``vlp::blocked_sparse_attention``),
whose geometry arguments are plain integers and strings (symbolic under dynamic shapes), so the block
around it (norms, the ``qkv`` and output projections, the MLP) compiles as one graph for every batch size
and text length. Inside, the operator runs the eager kernels: the forward of
:func:`~vlp.models.ernie_vilg.sparse_kernels.blocked_forward` and the chunk-by-chunk recomputing backward
of :func:`~vlp.models.ernie_vilg.sparse_recompute.attention_backward`, so it keeps ``qkv`` and the
small masks (the memory of ``recompute=True, recompute_qkv=False``), and its outputs and gradients are
those of the eager attention. With dropout the forward returns the RNG state it started from, which the
backward restores, so both draw the same masks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import Tensor

from vlp.models.ernie_vilg.sparse_blocks import BlockPlan, block_plan, padded
from vlp.models.ernie_vilg.sparse_kernels import blocked_forward
from vlp.models.ernie_vilg.sparse_patterns import ImageTextLayout, SparsePattern
from vlp.models.ernie_vilg.sparse_recompute import attention_backward, rng_state


def _masks(
    qkv: Tensor,
    key_mask: Tensor | None,
    text_len: int,
    grid: list[int],
    direction: str,
    source_first: bool,
    kind: str,
    context: int,
    kernel_size: int,
    block: int | None,
    chunks: int,
) -> tuple[BlockPlan, Tensor | None, Tensor]:
    """The cached plan of the geometry and its text and image-block masks with the key padding."""
    pattern = SparsePattern(kind, context, kernel_size)  # type: ignore[arg-type]
    plan = block_plan(
        text_len, (grid[0], grid[1]), direction, source_first, pattern, block, chunks, qkv.device
    )
    text_mask = None
    if text_len:
        text_mask = padded(plan.text_rule, plan.text_itself, plan.text_keys, key_mask)[:, None]
    return plan, text_mask, padded(plan.rule, plan.itself, plan.key_index, key_mask)


@torch.library.custom_op("vlp::blocked_sparse_attention", mutates_args=())
def _forward_op(
    qkv: Tensor,
    key_mask: Tensor | None,
    text_len: int,
    grid: list[int],
    direction: str,
    source_first: bool,
    kind: str,
    context: int,
    kernel_size: int,
    block: int | None,
    chunks: int,
    dropout_p: float,
) -> tuple[Tensor, Tensor]:
    """``qkv [B, N, 3, H, d]`` → (``[B, N, H, d]``, the RNG state before dropout, empty without)."""
    geometry = (text_len, grid, direction, source_first, kind, context, kernel_size, block, chunks)
    plan, text_mask, image_mask = _masks(qkv, key_mask, *geometry)
    state = rng_state(qkv.device) if dropout_p > 0 else torch.empty(0, dtype=torch.uint8)
    return blocked_forward(qkv, text_mask, image_mask, plan, dropout_p).contiguous(), state


@_forward_op.register_fake
def _forward_fake(
    qkv: Tensor,
    key_mask: Tensor | None,
    text_len: int,
    grid: list[int],
    direction: str,
    source_first: bool,
    kind: str,
    context: int,
    kernel_size: int,
    block: int | None,
    chunks: int,
    dropout_p: float,
) -> tuple[Tensor, Tensor]:
    batch, length, _, heads, head_dim = qkv.shape
    state_size = rng_state(qkv.device).numel() if dropout_p > 0 else 0
    return qkv.new_empty(batch, length, heads, head_dim), torch.empty(state_size, dtype=torch.uint8)


@torch.library.custom_op("vlp::blocked_sparse_attention_backward", mutates_args=())
def _backward_op(
    grad: Tensor,
    qkv: Tensor,
    key_mask: Tensor | None,
    state: Tensor,
    text_len: int,
    grid: list[int],
    direction: str,
    source_first: bool,
    kind: str,
    context: int,
    kernel_size: int,
    block: int | None,
    chunks: int,
    dropout_p: float,
) -> Tensor:
    """The gradient of ``qkv``: the blocks attended again chunk by chunk (``attention_backward``)."""
    geometry = (text_len, grid, direction, source_first, kind, context, kernel_size, block, chunks)
    plan, text_mask, image_mask = _masks(qkv, key_mask, *geometry)
    ctx = SimpleNamespace(
        plan=plan, dropout_p=dropout_p, has_bias=False, rng=state if state.numel() else None
    )
    with _autograd_dispatch():
        grad_qkv, _, _ = attention_backward(ctx, qkv, grad, None, text_mask, image_mask)
    return grad_qkv


@contextmanager
def _autograd_dispatch() -> Iterator[None]:
    """Autograd's dispatch keys back on: a custom operator's kernel runs below autograd (the keys are
    excluded), and the recomputing backward differentiates each chunk's attention with autograd."""
    exclude = torch._C._dispatch_tls_local_exclude_set().remove(torch._C.DispatchKey.AutogradFunctionality)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude):
        yield


@_backward_op.register_fake
def _backward_fake(
    grad: Tensor,
    qkv: Tensor,
    key_mask: Tensor | None,
    state: Tensor,
    text_len: int,
    grid: list[int],
    direction: str,
    source_first: bool,
    kind: str,
    context: int,
    kernel_size: int,
    block: int | None,
    chunks: int,
    dropout_p: float,
) -> Tensor:
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(
    ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple[Tensor, Tensor]
) -> None:
    qkv, key_mask, *geometry = inputs
    ctx.save_for_backward(qkv, key_mask, output[1])
    ctx.geometry = geometry


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor, _state_grad: Tensor | None) -> tuple:
    qkv, key_mask, state = ctx.saved_tensors
    grad_qkv = _backward_op(grad, qkv, key_mask, state, *ctx.geometry)
    return (grad_qkv, None, *[None] * len(ctx.geometry))


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def blocked_sparse_attention(
    qkv: Tensor,
    layout: ImageTextLayout,
    pattern: SparsePattern,
    block: int | None,
    chunks: int,
    dropout_p: float = 0.0,
) -> Tensor:
    """:func:`~vlp.models.ernie_vilg.sparse_attention.blocked_attention` of ``qkv [B, N, 3, H, d]``
    (without the output projection) through the custom operator: ``[B, N, H, d]``."""
    key_mask = None if layout.key_mask is None else layout.key_mask.to(qkv.device)
    out, _ = _forward_op(
        qkv,
        key_mask,
        layout.text_len,
        list(layout.grid),
        layout.direction,
        layout.source_first,
        pattern.kind,
        pattern.context,
        pattern.kernel_size,
        block,
        chunks,
        dropout_p,
    )
    return out
