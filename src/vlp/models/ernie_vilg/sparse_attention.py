"""Sparse self-attention over ``[text; image]`` sequences (ERNIE-ViLG): blocked kernels and a dense reference.

The patterns and their rule are defined in :mod:`vlp.models.ernie_vilg.sparse_patterns`. Two implementations
of the same attention, both on ``F.scaled_dot_product_attention``:

- :func:`~vlp.models.ernie_vilg.sparse_kernels.dense_pattern_attention`: one SDPA call with the full ``[B, 1, N, N]`` mask of
  :func:`~vlp.models.ernie_vilg.sparse_patterns.pattern_mask`, the reference;
- :func:`blocked_attention`: the image queries in blocks of the grid (:mod:`vlp.models.ernie_vilg.sparse_blocks`),
  each block gathered with the keys its pattern can admit (its rows / columns / window plus a halo,
  and the text when the text is the source) and stacked into the batch of one SDPA call with a
  small per-block mask evaluated from the same rule; the text queries in one SDPA call over the keys
  they can see (the text, or everything for a text target). No ``[N, N]`` score matrix or mask
  exists: a block's scores are ``Q x K_block``.

By default (``recompute``) backward keeps only the fused ``qkv`` and the small masks, gathers and
attends again chunk by chunk, and adds each chunk's gradients into one ``d qkv`` buffer by index
(:class:`~vlp.models.ernie_vilg.sparse_recompute.RecomputedBlockedAttention`), as a fused attention kernel
recomputes its scores. Given the
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

Under ``torch.compile`` the blocked attention runs as one custom operator
(:mod:`vlp.models.ernie_vilg.sparse_op`: the same kernels, opaque to the compiler), so a block with it
compiles without a graph break; it keeps ``qkv`` for backward, as ``recompute_qkv=False`` does.

:class:`SparseSelfAttention` has the parameter names of :class:`vlp.models.layers.transformer.Attention`
(``qkv``, ``proj``), so a checkpoint of one loads into the other, and it is a
:class:`~vlp.models.layers.transformer.Block`'s ``attn_layer``: the block hands its second argument, here an
:class:`~vlp.models.ernie_vilg.sparse_patterns.ImageTextLayout`, on untouched.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from vlp.models.ernie_vilg.sparse_blocks import BlockPlan, block_plan, padded
from vlp.models.ernie_vilg.sparse_kernels import blocked_forward, dense_pattern_attention
from vlp.models.ernie_vilg.sparse_op import blocked_sparse_attention
from vlp.models.ernie_vilg.sparse_patterns import ImageTextLayout, PatternKind, SparsePattern
from vlp.models.ernie_vilg.sparse_recompute import (
    RecomputedBlockedAttention,
    fused_qkv,
)

__all__ = [
    "DEFAULT_CHUNKS",
    "Implementation",
    "SparseSelfAttention",
    "blocked_attention",
    "dense_pattern_attention",
]

Implementation = Literal["blocked", "dense"]
DEFAULT_CHUNKS = 8


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
        blocked = self.implementation == "blocked" and self.pattern.kind != "dense"
        if blocked and torch.compiler.is_compiling():  # one operator for the compiler (sparse_op)
            qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
            out = blocked_sparse_attention(qkv, layout, self.pattern, self.block, self.chunks, dropout)
            return self.proj_drop(self.proj(out.flatten(2)))
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
