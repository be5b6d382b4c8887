"""Sparse self-attention over ``[text; image]`` sequences (ERNIE-ViLG): blocked kernels and a dense reference.

The patterns and the rule are defined in :mod:`vlp.models.sparse_patterns`. Two implementations of
the same attention:

- :func:`dense_pattern_attention`: one SDPA call with the full ``[B, 1, N, N]`` mask of
  :func:`~vlp.models.sparse_patterns.pattern_mask`, the reference;
- :func:`blocked_attention`: image queries in blocks of the grid, each block attending to the keys
  its pattern can admit (the block's rows/columns/window, widened by a halo of ``context`` rows or
  ``k // 2`` cells, plus the text when the text is the source), gathered by ``unfold`` and stacked
  into the batch of one SDPA call with a small per-block mask evaluated from the same rule. ``row``
  blocks are grid rows, ``column`` blocks grid columns, ``conv`` blocks square tiles. Text queries
  attend in one SDPA call to the keys they can see (the text, or everything for a text target).
  No ``[N, N]`` score matrix or mask exists: scores per block are ``Q x (T + K_block)``.

``torch.nn.attention.flex_attention`` would express the same masks as a ``BlockMask``, but in this
torch (2.14) on CPU it has no backward ("FlexAttention does not support backward on CPU"), so
training cannot use it here.

:class:`SparseSelfAttention` has the parameter names of :class:`vlp.models.transformer.Attention`
(``qkv``, ``proj``), so a checkpoint of one loads into the other and it can replace ``block.attn``
in a :class:`~vlp.models.transformer.Block`: the block hands its second argument, here an
:class:`~vlp.models.sparse_patterns.ImageTextLayout`, on untouched.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vlp.models.sparse_patterns import (
    ImageTextLayout,
    PatternKind,
    SparsePattern,
    allowed_pairs,
    pattern_mask,
)

Implementation = Literal["blocked", "dense"]
DEFAULT_BLOCK: dict[str, int] = {"row": 4, "column": 4, "conv": 8}


def dense_pattern_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: ImageTextLayout, pattern: SparsePattern, dropout_p: float = 0.0
) -> Tensor:
    """Reference: SDPA with the full pattern mask. ``q, k, v``: ``[B, N, H, d]`` → ``[B, N, H, d]``."""
    mask = pattern_mask(
        pattern.kind,
        layout.grid,
        layout.text_len,
        layout.direction,
        source_first=layout.source_first,
        key_mask=layout.key_mask,
        context=pattern.context,
        kernel_size=pattern.kernel_size,
    ).to(q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p
    )
    return out.transpose(1, 2)


def block_geometry(
    pattern: SparsePattern, layout: ImageTextLayout, block: int | None = None
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Query block ``(rows, cols)`` and key halo ``(up, down, left, right)`` of a sparse pattern.

    ``block``: grid rows per ``row`` block, columns per ``column`` block, the side of a ``conv`` tile
    (defaults in ``DEFAULT_BLOCK``). A causal image never looks below a block: its halo ``down`` is 0.
    """
    h, w = layout.grid
    size = DEFAULT_BLOCK[pattern.kind] if block is None else block
    if size < 1:
        raise ValueError(f"block must be >= 1, got {size}")
    below = 0 if layout.image_is_target else 1
    if pattern.kind == "row":
        return (min(size, h), w), (pattern.context, below * pattern.context, 0, 0)
    if pattern.kind == "column":
        return (h, min(size, w)), (0, 0, pattern.context, pattern.context)
    if pattern.kind == "conv":
        half = pattern.kernel_size // 2
        return (min(size, h), min(size, w)), (half, below * half, half, half)
    raise ValueError(f"pattern {pattern.kind!r} has no blocks; use dense_pattern_attention")


def to_blocks(x: Tensor, tile: tuple[int, int], halo: tuple[int, int, int, int], fill: float) -> Tensor:
    """``[B, h, w, C]`` → ``[B, blocks, cells, C]``: tiles of ``tile`` widened by ``halo``, row-major.

    The grid is first padded to whole tiles and by the halo with ``fill``; each block holds its
    ``(rows + up + down) x (cols + left + right)`` cells in raster order (a copy).
    """
    batch, h, w, channels = x.shape
    (rows, cols), (up, down, left, right) = tile, halo
    n_rows, n_cols = -(-h // rows), -(-w // cols)
    x = F.pad(x, (0, 0, left, right + n_cols * cols - w, up, down + n_rows * rows - h), value=fill)
    x = x.unfold(1, rows + up + down, rows).unfold(2, cols + left + right, cols)  # [B, nh, nw, C, kh, kw]
    return x.permute(0, 1, 2, 4, 5, 3).reshape(batch, n_rows * n_cols, -1, channels)


@dataclass(frozen=True)
class BlockPlan:
    """Where each block reads and what it may see, for one geometry and pattern (cached, no padding).

    Positions are sequence indices; a fill cell (off the grid) reads position 0 and is masked out.
    ``rule`` is the seq2seq rule AND pattern AND real cell; ``itself`` marks each query's own key and,
    for fill queries, every key (so SDPA stays finite; their outputs are dropped).
    """

    text: slice  # the text queries
    text_keys: slice  # the keys they attend over: the text (a source) or everything (a target)
    text_rule: Tensor  # [T, K_text]
    text_itself: Tensor  # [T, K_text]
    query_index: Tensor  # [blocks, Q]
    key_index: Tensor  # [blocks, K]
    rule: Tensor  # [blocks, Q, K]
    itself: Tensor  # [blocks, Q, K]
    image_order: Tensor | None  # [G]: raster image token -> row of the flat block output; None: same order


@functools.lru_cache(maxsize=64)
def block_plan(
    text_len: int,
    grid: tuple[int, int],
    direction: str,
    source_first: bool,
    pattern: SparsePattern,
    block: int | None,
    device: torch.device,
) -> BlockPlan:
    """The :class:`BlockPlan` of a layout geometry (see :func:`block_geometry` for the blocks).

    Built outside inference mode even when called inside it: the cached index tensors must stay
    usable by a later training step (autograd refuses to save inference tensors).
    """
    with torch.inference_mode(False):
        return _block_plan(text_len, grid, direction, source_first, pattern, block, device)


def _block_plan(
    text_len: int,
    grid: tuple[int, int],
    direction: str,
    source_first: bool,
    pattern: SparsePattern,
    block: int | None,
    device: torch.device,
) -> BlockPlan:
    layout = ImageTextLayout(text_len, grid, direction, source_first)  # type: ignore[arg-type]
    (h, w), length = grid, layout.length
    positions = torch.arange(length, device=device)
    text = slice(layout.text_start, layout.text_start + text_len)
    text_keys = text if layout.image_is_target else slice(0, length)
    text_q, text_k = positions[text, None], positions[None, text_keys]
    text_rule = allowed_pairs(text_q, text_k, layout, pattern)

    tile, halo = block_geometry(pattern, layout, block)
    image = positions[layout.image_start : layout.image_start + layout.image_len].view(1, h, w, 1)
    query_pos = to_blocks(image, tile, (0, 0, 0, 0), -1)[0, :, :, 0]  # [blocks, Q]
    key_pos = to_blocks(image, tile, halo, -1)[0, :, :, 0]  # [blocks, K_image]
    if layout.image_is_target and text_len:  # every image block also sees the text (the source)
        key_pos = torch.cat([positions[text].expand(key_pos.shape[0], text_len), key_pos], 1)
    query, key = query_pos[:, :, None], key_pos[:, None, :]
    rule = allowed_pairs(query, key, layout, pattern) & (key >= 0)
    itself = ((query == key) & (query >= 0)) | (query < 0)
    flat = query_pos.flatten()
    raster = flat - layout.image_start
    in_order = flat.numel() == layout.image_len and bool(
        (raster == torch.arange(len(flat), device=device)).all()
    )
    image_order = None
    if not in_order:
        image_order = torch.empty(layout.image_len, dtype=torch.long, device=device)
        real = flat >= 0
        image_order[raster[real]] = torch.arange(len(flat), device=device)[real]
    return BlockPlan(
        text, text_keys, text_rule, text_q == text_k, query_pos.clamp(min=0), key_pos.clamp(min=0),
        rule, itself, image_order,
    )  # fmt: skip


def padded(rule: Tensor, itself: Tensor, key_index: Tensor | slice, key_mask: Tensor | None) -> Tensor:
    """``(rule AND real key) OR itself``, with a leading batch dimension (1 without ``key_mask``)."""
    if key_mask is None:
        return (rule | itself)[None]
    keys = key_mask[:, key_index]  # [B, ..., K] for a slice, [B, blocks, K] for block indices
    return (rule & keys.unsqueeze(-2)) | itself


def image_blocks(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, plan: BlockPlan, image: slice, dropout_p: float
) -> Tensor:
    """Image queries by blocks: gather, one SDPA call over ``[B * blocks, H, L, d]``, back to raster order.

    ``q, k, v``: ``[B, N, H, d]``; ``mask``: ``[B * blocks, 1, Q, K]`` → ``[B, G, H, d]``.
    """
    batch, _, heads, head_dim = q.shape
    blocks, queries = plan.query_index.shape
    if plan.image_order is None:  # the blocks are the raster itself (row blocks of whole rows)
        image_q = q[:, image].reshape(batch, blocks, queries, heads, head_dim)
    else:
        image_q = q[:, plan.query_index]  # [B, blocks, Q, H, d]
    image_k, image_v = k[:, plan.key_index], v[:, plan.key_index]  # [B, blocks, K, H, d]

    def heads_first(x: Tensor) -> Tensor:  # [B, blocks, L, H, d] → [B * blocks, H, L, d]
        return x.reshape(batch * blocks, x.shape[2], heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        heads_first(image_q), heads_first(image_k), heads_first(image_v), attn_mask=mask, dropout_p=dropout_p
    )
    out = out.transpose(1, 2).reshape(batch, blocks * queries, heads, head_dim)
    return out if plan.image_order is None else out[:, plan.image_order]


def blocked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: ImageTextLayout,
    pattern: SparsePattern,
    block: int | None = None,
    dropout_p: float = 0.0,
    recompute: bool = True,
) -> Tensor:
    """The same attention as :func:`dense_pattern_attention` computed block-wise (module docstring).

    ``q, k, v``: ``[B, N, H, d]`` in the layout's sequence order → ``[B, N, H, d]``. With
    ``recompute``, the gathered blocks are not kept for backward but gathered and attended again
    there (``torch.utils.checkpoint``), as a fused attention kernel recomputes its scores: what
    backward keeps is then ``q, k, v`` and the output, as for dense SDPA, without its ``[N, N]`` mask.
    """
    if pattern.kind == "dense":
        return dense_pattern_attention(q, k, v, layout, pattern, dropout_p)
    batch = q.shape[0]
    plan = block_plan(
        layout.text_len, tuple(layout.grid), layout.direction, layout.source_first, pattern, block, q.device
    )
    key_mask = None if layout.key_mask is None else layout.key_mask.to(q.device)
    parts: dict[str, Tensor] = {}
    if layout.text_len:
        mask = padded(plan.text_rule, plan.text_itself, plan.text_keys, key_mask)[:, None]
        out = F.scaled_dot_product_attention(
            q[:, plan.text].transpose(1, 2),
            k[:, plan.text_keys].transpose(1, 2),
            v[:, plan.text_keys].transpose(1, 2),
            attn_mask=mask,
            dropout_p=dropout_p,
        )
        parts["text"] = out.transpose(1, 2)

    blocks = plan.query_index.shape[0]
    mask = padded(plan.rule, plan.itself, plan.key_index, key_mask)
    mask = mask.expand(batch, *mask.shape[1:]).reshape(batch * blocks, 1, *mask.shape[2:])
    image = slice(layout.image_start, layout.image_start + layout.image_len)
    if recompute and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        parts["image"] = checkpoint(image_blocks, q, k, v, mask, plan, image, dropout_p, use_reentrant=False)
    else:
        parts["image"] = image_blocks(q, k, v, mask, plan, image, dropout_p)
    order = ["text", "image"] if layout.text_start == 0 else ["image", "text"]
    return torch.cat([parts[name] for name in order if name in parts], 1)


class SparseSelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection under one ERNIE-ViLG pattern.

    Args:
        dim, num_heads: width and heads (``dim`` divisible by ``num_heads``).
        pattern: ``dense`` (the seq2seq rule alone), ``row``, ``column`` or ``conv``.
        context: ``row`` / ``column``: neighbouring rows / columns admitted on each side.
        kernel_size: ``conv``: the odd window side.
        qkv_bias, attn_drop, proj_drop: as :class:`vlp.models.transformer.Attention`.
        implementation: ``blocked`` (the kernels above) or ``dense`` (the full-mask reference).
        block: rows per ``row`` block, columns per ``column`` block, ``conv`` tile side (speed only).
        recompute: gather the blocks again in backward instead of keeping them (memory only).
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
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if implementation not in ("blocked", "dense"):
            raise ValueError(f"implementation must be 'blocked' or 'dense', got {implementation!r}")
        if block is not None and block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.num_heads = num_heads
        self.pattern = SparsePattern(pattern, context, kernel_size)
        self.implementation = implementation
        self.block = block
        self.recompute = recompute
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
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads).unbind(2)
        dropout = self.attn_drop if self.training else 0.0
        if self.implementation == "dense":
            out = dense_pattern_attention(q, k, v, layout, self.pattern, dropout)
        else:
            out = blocked_attention(q, k, v, layout, self.pattern, self.block, dropout, self.recompute)
        return self.proj_drop(self.proj(out.reshape(batch, length, dim)))

    def extra_repr(self) -> str:
        return (
            f"pattern={self.pattern}, implementation={self.implementation}, block={self.block}, "
            f"recompute={self.recompute}"
        )
