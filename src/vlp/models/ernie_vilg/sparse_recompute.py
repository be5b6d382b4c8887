"""Backward by recomputation for the blocked sparse attention (:class:`RecomputedBlockedAttention`).

Backward keeps only the fused ``qkv`` (or the layer input it is regenerated from) and the small masks,
gathers and attends again chunk by chunk, and adds each chunk's gradients into one ``d qkv`` buffer by
index, as a fused attention kernel recomputes its scores. Dropout masks are replayed from the saved RNG
state, so every output and gradient is that of the kept graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vlp.models.ernie_vilg.sparse_blocks import BlockPlan
from vlp.models.ernie_vilg.sparse_kernels import (
    attend_blocks,
    attend_text,
    blocked_forward,
    chunk_blocks,
)


def fused_qkv(x: Tensor, weight: Tensor, bias: Tensor | None, num_heads: int) -> Tensor:
    """The fused projection ``[B, N, D]`` → ``[B, N, 3, H, d]``, as :class:`SparseSelfAttention` lays it out."""
    return F.linear(x, weight, bias).unflatten(-1, (3, num_heads, -1))


class RecomputedBlockedAttention(torch.autograd.Function):
    """:func:`blocked_forward`, then the output projection if one is given, keeping for backward
    only its input, the masks and the weights.

    The input is the fused ``qkv [B, N, 3, H, d]`` or, given the fused projection's weight (and bias),
    the layer input ``x [B, N, D]``: then ``qkv`` is computed here and regenerated from ``x`` in backward
    (one ``[B N, D] x [D, 3 D]`` matmul more), so the layer keeps ``x``, a third of the size of ``qkv``.

    Backward attends again in the forward's order, the image blocks one chunk at a time and then the
    text queries, and differentiates each piece alone, adding its gradients into one ``d qkv`` buffer
    by index: one chunk's blocks live at a time, and no gather leaves a full-size gradient of its own.
    The projection's input (the attention output) is not kept either: each regenerated piece adds its
    share of the weight gradient. The forward's RNG state is restored first, so attention dropout
    draws the same masks. A regenerated ``qkv`` is built and differentiated by autograd under the
    autocast state the forward ran in (backward itself runs outside autocast), so it and the gradients
    of ``x`` and the projection are those the kept graph gives.
    """

    @staticmethod
    def forward(
        ctx: Any,
        inputs: Tensor,
        qkv_weight: Tensor | None,
        qkv_bias: Tensor | None,
        num_heads: int,
        weight: Tensor | None,
        bias: Tensor | None,
        text_mask: Tensor | None,
        image_mask: Tensor,
        plan: BlockPlan,
        dropout_p: float,
    ) -> Tensor:
        ctx.plan, ctx.dropout_p, ctx.has_bias = plan, dropout_p, bias is not None
        ctx.num_heads, ctx.regenerate = num_heads, qkv_weight is not None
        ctx.rng = rng_state(inputs.device) if dropout_p > 0 else None
        device = inputs.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        ctx.save_for_backward(inputs, qkv_weight, qkv_bias, weight, text_mask, image_mask)
        qkv = inputs if qkv_weight is None else fused_qkv(inputs, qkv_weight, qkv_bias, num_heads)
        out = blocked_forward(qkv, text_mask, image_mask, plan, dropout_p)
        return out if weight is None else F.linear(out.flatten(2), weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        inputs, qkv_weight, qkv_bias, weight, text_mask, image_mask = ctx.saved_tensors
        masks = (text_mask, image_mask)
        if not ctx.regenerate:
            grad_qkv, grad_weight, grad_bias = attention_backward(ctx, inputs.detach(), grad, weight, *masks)
            return grad_qkv, None, None, None, grad_weight, grad_bias, None, None, None, None
        device, dtype, enabled = ctx.autocast
        x, w, b = (
            None if t is None else t.detach().requires_grad_(needs)
            for t, needs in zip((inputs, qkv_weight, qkv_bias), ctx.needs_input_grad[:3])
        )
        with torch.enable_grad(), torch.autocast(device, dtype, enabled=enabled):
            qkv = fused_qkv(x, w, b, ctx.num_heads)
        grad_qkv, grad_weight, grad_bias = attention_backward(ctx, qkv.detach(), grad, weight, *masks)
        leaves = [t for t in (x, w, b) if t is not None and t.requires_grad]
        found = iter(torch.autograd.grad(qkv, leaves, grad_qkv) if leaves else ())
        del qkv, grad_qkv
        grad_x, grad_w, grad_b = (
            next(found) if t is not None and t.requires_grad else None for t in (x, w, b)
        )
        return grad_x, grad_w, grad_b, None, grad_weight, grad_bias, None, None, None, None


def attention_backward(
    ctx: Any, qkv: Tensor, grad: Tensor, weight: Tensor | None, text_mask: Tensor | None, image_mask: Tensor
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:class:`RecomputedBlockedAttention`'s attention backward from ``qkv`` (detached): the gradients
    of ``qkv`` and, with the output projection ``weight``, of the projection's weight and bias."""
    plan: BlockPlan = ctx.plan
    grad_qkv = torch.zeros(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    dq, dk, dv = grad_qkv.unbind(2)
    grad_weight = None if weight is None else torch.zeros_like(weight)
    grad_bias = grad.sum((0, 1)) if ctx.has_bias else None

    def input_grads(
        inputs: list[Tensor], attend: Callable[..., Tensor], grad_rows: Tensor
    ) -> tuple[Tensor, ...]:
        """Attend ``inputs`` again; the gradients reaching them from these output rows."""
        with torch.enable_grad():
            out = attend(*inputs)  # [B, L, H, d]
        if grad_weight is not None:  # grad_rows: [B, L, D] of the projected output
            # backward runs outside autocast: match the dtypes the forward's F.linear used
            attended = out.detach().flatten(2).flatten(0, 1).to(grad_rows.dtype)
            grad_weight.add_(grad_rows.flatten(0, 1).T @ attended)
            grad_rows = (grad_rows @ weight.to(grad_rows.dtype)).view_as(out).to(out.dtype)
        return torch.autograd.grad(out, inputs, grad_rows)

    image_grad = grad[:, plan.image]
    queries = plan.query_index.shape[1]
    grad_rows = grad_qkv.view(qkv.shape[0], 3 * qkv.shape[1], -1)  # [B, 3 N, C], as read_rows reads
    devices = [qkv.device] if qkv.device.type == "cuda" else []
    with torch.random.fork_rng(devices, enabled=ctx.rng is not None):
        if ctx.rng is not None:
            set_rng_state(qkv.device, ctx.rng)
        for chunk in plan.chunks:  # the forward's order
            # this chunk's output gradient in block-major order; fill queries get none
            if plan.image_order is None:  # block-major order is the raster order
                chunk_grad = image_grad[:, chunk.blocks.start * queries : chunk.blocks.stop * queries]
            else:  # rows of the output gradient by sequence position (it may be a broadcast view)
                chunk_grad = grad[:, chunk.output_rows]
                if chunk.real is not None:
                    chunk_grad = chunk_grad * chunk.real.view(-1, *[1] * (grad.dim() - 2))
            blocks = [block.requires_grad_() for block in chunk_blocks(qkv, chunk)]
            mask = image_mask[:, chunk.blocks]
            block_grads = input_grads(
                blocks, lambda *b, m=mask: attend_blocks(*b, m, ctx.dropout_p), chunk_grad
            )
            del blocks, chunk_grad  # before the next chunk is read
            rows = (chunk.query_rows, chunk.key_rows, chunk.value_rows)
            for index, block_grad in zip(rows, block_grads):
                grad_rows.index_add_(1, index, block_grad.flatten(1, 2).flatten(2))
            del block_grads
        if text_mask is not None:
            text, keys = plan.text, plan.text_keys
            q, k, v = qkv.unbind(2)
            inputs = [
                q[:, text].requires_grad_(),
                k[:, keys].requires_grad_(),
                v[:, keys].requires_grad_(),
            ]
            text_grads = input_grads(
                inputs, lambda *t: attend_text(*t, text_mask, ctx.dropout_p), grad[:, text]
            )
            dq[:, text] += text_grads[0]
            dk[:, keys] += text_grads[1]
            dv[:, keys] += text_grads[2]
    return grad_qkv, grad_weight, grad_bias


def rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
