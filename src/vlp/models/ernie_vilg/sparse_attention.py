"""Sparse self-attention over ``[text; image]`` sequences (ERNIE-ViLG): blocked kernels and a dense reference.

The patterns and their rule are defined in :mod:`vlp.models.ernie_vilg.sparse_patterns`. Two implementations
of the same attention, both on ``F.scaled_dot_product_attention``:

- :func:`dense_pattern_attention`: one SDPA call with the full ``[B, 1, N, N]`` mask of
  :func:`~vlp.models.ernie_vilg.sparse_patterns.pattern_mask`, the reference;
- :func:`blocked_attention`: the image queries in blocks of the grid (:mod:`vlp.models.ernie_vilg.sparse_blocks`),
  each block gathered with the keys its pattern can admit (its rows / columns / window plus a halo,
  and the text when the text is the source) and stacked into the batch of one SDPA call with a
  small per-block mask evaluated from the same rule; the text queries in one SDPA call over the keys
  they can see (the text, or everything for a text target). No ``[N, N]`` score matrix or mask
  exists: a block's scores are ``Q x K_block``.

By default (``recompute``) backward keeps only the fused ``qkv`` and the small masks, gathers and
attends again chunk by chunk, and adds each chunk's gradients into one ``d qkv`` buffer by index
(:class:`RecomputedBlockedAttention`), as a fused attention kernel recomputes its scores. Given the
output projection, it also regenerates the projection's input there instead of keeping it; given the
fused ``qkv`` projection too (:func:`blocked_attention_layer`, ``recompute_qkv``, the default of
:class:`SparseSelfAttention`), it regenerates ``qkv`` from the layer input, so a layer keeps its input
and the small masks (with ``recompute_qkv=False``, its input and ``qkv``, three times as big; dense SDPA
keeps the input, ``qkv``, its output, its ``[B, 1, N, N]`` mask converted to float, and the
projection's input). Regenerating ``qkv`` costs one ``qkv`` matmul per layer in backward; every
output and gradient is that of the kept graph.

``torch.nn.attention.flex_attention`` would express the same masks as a ``BlockMask``, but in this
torch (2.14) on CPU it has no backward ("FlexAttention does not support backward on CPU"), so
training cannot use it here.

:class:`SparseSelfAttention` has the parameter names of :class:`vlp.models.layers.transformer.Attention`
(``qkv``, ``proj``), so a checkpoint of one loads into the other, and it can replace ``block.attn``
in a :class:`~vlp.models.layers.transformer.Block`: the block hands its second argument, here an
:class:`~vlp.models.ernie_vilg.sparse_patterns.ImageTextLayout`, on untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from vlp.models.ernie_vilg.sparse_blocks import BlockPlan, Chunk, block_plan, padded
from vlp.models.ernie_vilg.sparse_patterns import ImageTextLayout, PatternKind, SparsePattern, pattern_mask
from vlp.models.layers.attention import sdpa

Implementation = Literal["blocked", "dense"]
DEFAULT_CHUNKS = 8


def dense_pattern_attention(
    qkv: Tensor, layout: ImageTextLayout, pattern: SparsePattern, dropout_p: float = 0.0
) -> Tensor:
    """Reference: SDPA with the full pattern mask. ``qkv``: ``[B, N, 3, H, d]`` → ``[B, N, H, d]``."""
    mask = pattern_mask(
        pattern.kind,
        layout.grid,
        layout.text_len,
        layout.direction,
        source_first=layout.source_first,
        key_mask=layout.key_mask,
        context=pattern.context,
        kernel_size=pattern.kernel_size,
    ).to(qkv.device)
    q, k, v = qkv.transpose(1, 3).unbind(2)  # [B, H, N, d] each
    return sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p).transpose(1, 2)


def attend_text(q_text: Tensor, k_keys: Tensor, v_keys: Tensor, mask: Tensor, dropout_p: float) -> Tensor:
    """The text queries ``[B, T, H, d]`` over the keys they may see ``[B, K, H, d]`` → ``[B, T, H, d]``."""
    out = sdpa(
        q_text.transpose(1, 2),
        k_keys.transpose(1, 2),
        v_keys.transpose(1, 2),
        attn_mask=mask,
        dropout_p=dropout_p,
    )
    return out.transpose(1, 2)


def attend_blocks(
    q_blocks: Tensor, k_blocks: Tensor, v_blocks: Tensor, mask: Tensor, dropout_p: float
) -> Tensor:
    """One SDPA call over gathered blocks ``[B, blocks, L, H, d]`` (as ``[B * blocks, H, L, d]``).

    ``mask``: ``[B or 1, blocks, Q, K]``. Returns the block-major output ``[B, blocks * Q, H, d]``.
    """
    batch, blocks, queries, heads, head_dim = q_blocks.shape

    def heads_first(x: Tensor) -> Tensor:
        return x.reshape(batch * blocks, x.shape[2], heads, head_dim).transpose(1, 2)

    mask = mask.expand(batch, *mask.shape[1:]).reshape(batch * blocks, 1, *mask.shape[2:])
    out = sdpa(
        heads_first(q_blocks),
        heads_first(k_blocks),
        heads_first(v_blocks),
        attn_mask=mask,
        dropout_p=dropout_p,
    )
    return out.transpose(1, 2).reshape(batch, blocks * queries, heads, head_dim)


def read_rows(qkv: Tensor, rows: Tensor, blocks: int) -> Tensor:
    """Rows of the fused projection ``qkv [B, N, 3, H, d]`` viewed ``[B, 3 N, C]`` → ``[B, blocks, L, H, d]``.

    One ``index_select`` with indices computed once per geometry (:class:`~vlp.models.ernie_vilg.sparse_blocks.Chunk`):
    several times faster on CPU than advanced indexing.
    """
    batch, length, _, heads, head_dim = qkv.shape
    flat = qkv.reshape(batch, 3 * length, heads * head_dim)
    return flat.index_select(1, rows).view(batch, blocks, -1, heads, head_dim)


def chunk_blocks(qkv: Tensor, chunk: Chunk) -> list[Tensor]:
    """The query, key and value blocks of one chunk, each ``[B, blocks, L, H, d]``."""
    blocks = chunk.blocks.stop - chunk.blocks.start
    return [read_rows(qkv, rows, blocks) for rows in (chunk.query_rows, chunk.key_rows, chunk.value_rows)]


def blocked_forward(
    qkv: Tensor, text_mask: Tensor | None, image_mask: Tensor, plan: BlockPlan, dropout_p: float
) -> Tensor:
    """The image blocks one chunk at a time, then the text queries → ``[B, N, H, d]``."""
    outs = [
        attend_blocks(*chunk_blocks(qkv, chunk), image_mask[:, chunk.blocks], dropout_p)
        for chunk in plan.chunks
    ]
    image = torch.cat(outs, 1) if len(outs) > 1 else outs[0]
    if plan.image_order is not None:
        image = image.index_select(1, plan.image_order)
    if text_mask is None:
        return image
    q, k, v = qkv.unbind(2)
    text = attend_text(q[:, plan.text], k[:, plan.text_keys], v[:, plan.text_keys], text_mask, dropout_p)
    return torch.cat([text, image] if plan.text_first else [image, text], 1)


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


def block_masks(
    layout: ImageTextLayout, pattern: SparsePattern, block: int | None, chunks: int, device: torch.device
) -> tuple[BlockPlan, Tensor | None, Tensor]:
    """The cached :class:`BlockPlan` of the layout's geometry and its text and image-block masks with
    the layout's key padding: ``[B or 1, 1, T, K_text]`` (``None`` without text), ``[B or 1, blocks, Q, K]``."""
    geometry = (layout.text_len, tuple(layout.grid), layout.direction, layout.source_first)
    plan = block_plan(*geometry, pattern, block, chunks, device)
    key_mask = None if layout.key_mask is None else layout.key_mask.to(device)
    text_mask = None
    if layout.text_len:
        text_mask = padded(plan.text_rule, plan.text_itself, plan.text_keys, key_mask)[:, None]
    image_mask = padded(plan.rule, plan.itself, plan.key_index, key_mask)
    return plan, text_mask, image_mask


def blocked_attention(
    qkv: Tensor,
    layout: ImageTextLayout,
    pattern: SparsePattern,
    block: int | None = None,
    dropout_p: float = 0.0,
    recompute: bool = True,
    chunks: int = DEFAULT_CHUNKS,
    proj: nn.Linear | None = None,
) -> Tensor:
    """The same attention as :func:`dense_pattern_attention`, computed block-wise (module docstring).

    ``qkv``: ``[B, N, 3, H, d]`` in the layout's sequence order → ``[B, N, H, d]``, or ``proj`` of it,
    ``[B, N, D]``, when ``proj`` is given. ``block`` sets the block size
    (:func:`~vlp.models.ernie_vilg.sparse_blocks.block_geometry`), ``chunks`` how many groups of blocks are
    attended at a time, ``recompute`` whether backward recomputes (:class:`RecomputedBlockedAttention`)
    instead of keeping the gathered blocks and the projection's input; none of them changes the result.
    """
    if pattern.kind == "dense":
        out = dense_pattern_attention(qkv, layout, pattern, dropout_p)
        return out if proj is None else proj(out.flatten(2))
    plan, text_mask, image_mask = block_masks(layout, pattern, block, chunks, qkv.device)
    if recompute and needs_grad(qkv, proj):
        weight, bias = (None, None) if proj is None else (proj.weight, proj.bias)
        return RecomputedBlockedAttention.apply(
            qkv, None, None, 0, weight, bias, text_mask, image_mask, plan, dropout_p
        )
    out = blocked_forward(qkv, text_mask, image_mask, plan, dropout_p)
    return out if proj is None else proj(out.flatten(2))


def blocked_attention_layer(
    x: Tensor,
    qkv_proj: nn.Linear,
    num_heads: int,
    layout: ImageTextLayout,
    pattern: SparsePattern,
    block: int | None = None,
    dropout_p: float = 0.0,
    chunks: int = DEFAULT_CHUNKS,
    proj: nn.Linear | None = None,
) -> Tensor:
    """:func:`blocked_attention` of ``qkv_proj(x)`` (``x``: ``[B, N, D]``) with a backward that also
    regenerates ``qkv`` from ``x``: the layer keeps ``x`` and the small masks only. The same result
    and gradients as the recomputing :func:`blocked_attention`, for one more ``qkv`` matmul in backward.
    """
    if pattern.kind == "dense" or not needs_grad(x, qkv_proj, proj):
        qkv = fused_qkv(x, qkv_proj.weight, qkv_proj.bias, num_heads)
        return blocked_attention(qkv, layout, pattern, block, dropout_p, False, chunks, proj)
    plan, text_mask, image_mask = block_masks(layout, pattern, block, chunks, x.device)
    weight, bias = (None, None) if proj is None else (proj.weight, proj.bias)
    return RecomputedBlockedAttention.apply(
        x, qkv_proj.weight, qkv_proj.bias, num_heads, weight, bias, text_mask, image_mask, plan, dropout_p
    )


def needs_grad(x: Tensor, *modules: nn.Module | None) -> bool:
    """Autograd is on and ``x`` or a parameter of ``modules`` wants a gradient."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for m in modules if m is not None for p in m.parameters())


class SparseSelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection under one ERNIE-ViLG pattern.

    Args:
        dim, num_heads: width and heads (``dim`` divisible by ``num_heads``).
        pattern: ``dense`` (the seq2seq rule alone), ``row``, ``column`` or ``conv``.
        context: ``row`` / ``column``: neighbouring rows / columns admitted on each side.
        kernel_size: ``conv``: the odd window side.
        qkv_bias, attn_drop, proj_drop: as :class:`vlp.models.layers.transformer.Attention`.
        implementation: ``blocked`` (the kernels above) or ``dense`` (the full-mask reference).
        block: rows per ``row`` block, columns per ``column`` block, ``conv`` tile side (speed and
            memory only).
        recompute: attend again in backward instead of keeping the gathered blocks and the
            projection's input (memory only).
        recompute_qkv: with ``recompute``, also regenerate the fused ``qkv`` from the layer input in
            backward instead of keeping it (:func:`blocked_attention_layer`; memory only, one more
            ``qkv`` matmul per backward).
        chunks: image blocks are attended in this many groups (memory only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        pattern: PatternKind = "row",
        context: int = 0,
        kernel_size: int = 5,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        implementation: Implementation = "blocked",
        block: int | None = None,
        recompute: bool = True,
        chunks: int = DEFAULT_CHUNKS,
        recompute_qkv: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if implementation not in ("blocked", "dense"):
            raise ValueError(f"implementation must be 'blocked' or 'dense', got {implementation!r}")
        if block is not None and block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        if chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
        self.num_heads = num_heads
        self.pattern = SparsePattern(pattern, context, kernel_size)
        self.implementation = implementation
        self.block = block
        self.recompute = recompute
        self.recompute_qkv = recompute_qkv
        self.chunks = chunks
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, layout: ImageTextLayout) -> Tensor:
        if not isinstance(layout, ImageTextLayout):
            raise TypeError(f"layout must be an ImageTextLayout, got {type(layout).__name__}")
        batch, length, dim = x.shape
        if length != layout.length:
            raise ValueError(f"x has {length} tokens, the layout {layout.length} (text + image)")
        if layout.key_mask is not None and layout.key_mask.shape[0] != batch:
            raise ValueError(f"layout.key_mask has batch {layout.key_mask.shape[0]}, x has {batch}")
        dropout = self.attn_drop if self.training else 0.0
        if self.implementation == "blocked" and self.recompute and self.recompute_qkv:
            out = blocked_attention_layer(
                x, self.qkv, self.num_heads, layout, self.pattern, self.block, dropout, self.chunks, self.proj
            )
            return self.proj_drop(out)
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        if self.implementation == "dense":
            out = self.proj(dense_pattern_attention(qkv, layout, self.pattern, dropout).flatten(2))
        else:
            out = blocked_attention(
                qkv, layout, self.pattern, self.block, dropout, self.recompute, self.chunks, self.proj
            )
        return self.proj_drop(out)

    def extra_repr(self) -> str:
        return (
            f"pattern={self.pattern}, implementation={self.implementation}, block={self.block}, "
            f"recompute={self.recompute}, recompute_qkv={self.recompute_qkv}, chunks={self.chunks}"
        )
