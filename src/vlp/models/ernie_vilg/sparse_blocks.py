"""Where the blocked sparse-attention kernels read: blocks of the image grid, their keys and masks.

Image queries are grouped into blocks of the grid; a block's keys are the cells its pattern can
admit (the block widened by a halo) plus, when the text is the source, the text. ``row`` blocks are
``block`` grid rows with ``context`` rows of halo above (and below for a bidirectional image);
``column`` blocks are ``block`` grid columns with ``context`` columns either side; ``conv`` blocks
are ``block x block`` tiles with ``k // 2`` cells of halo (none below for a causal image: every
cell there comes later in the raster). The positions are computed once per geometry and cached
(:func:`block_plan`); only the key padding changes from batch to batch (:func:`padded`).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.models.ernie_vilg.sparse_patterns import ImageTextLayout, SparsePattern, allowed_pairs

DEFAULT_BLOCK: dict[str, int] = {"row": 4, "column": 4, "conv": 8}


def block_geometry(
    pattern: SparsePattern, layout: ImageTextLayout, block: int | None = None
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Query block ``(rows, cols)`` and key halo ``(up, down, left, right)`` of a sparse pattern.

    ``block``: grid rows per ``row`` block, columns per ``column`` block, the side of a ``conv`` tile
    (``None``: ``DEFAULT_BLOCK``). The block changes speed and memory, never the result.
    """
    h, w = layout.grid
    size = DEFAULT_BLOCK.get(pattern.kind, 1) if block is None else block
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
    raise ValueError(f"pattern {pattern.kind!r} has no blocks; attend densely")


def to_blocks(x: Tensor, tile: tuple[int, int], halo: tuple[int, int, int, int], fill: int) -> Tensor:
    """``[h, w]`` → ``[blocks, cells]``: tiles of ``tile`` widened by ``halo``, blocks row-major.

    The grid is padded to whole tiles and by the halo with ``fill``; each block lists its
    ``(rows + up + down) x (cols + left + right)`` cells in raster order.
    """
    h, w = x.shape
    (rows, cols), (up, down, left, right) = tile, halo
    n_rows, n_cols = -(-h // rows), -(-w // cols)
    x = F.pad(x[None], (left, right + n_cols * cols - w, up, down + n_rows * rows - h), value=fill)[0]
    x = x.unfold(0, rows + up + down, rows).unfold(1, cols + left + right, cols)  # [nh, nw, kh, kw]
    return x.reshape(n_rows * n_cols, -1)


@dataclass(frozen=True)
class Chunk:
    """Consecutive blocks attended together, with the rows they read of the fused projection viewed
    as ``[B, 3 N, C]`` (row ``3 n + s`` is slot ``s`` = q, k, v of position ``n``)."""

    blocks: slice
    query_rows: Tensor  # [blocks * Q]
    key_rows: Tensor  # [blocks * K]
    value_rows: Tensor  # [blocks * K]
    output_rows: Tensor  # [blocks * Q] sequence position of each query (fill → 0)
    real: Tensor | None  # [blocks * Q]: False for fill queries; None when there are none


@dataclass(frozen=True)
class BlockPlan:
    """Where each block reads and what it may see, for one geometry and pattern (no padding).

    Positions are sequence indices; a fill cell (off the grid) reads position 0 and is masked out.
    ``rule`` is the seq2seq rule AND pattern AND real cell; ``itself`` marks each query's own key and,
    for a fill query, every key (so SDPA stays finite; fill outputs are dropped).
    """

    text: slice  # the text queries
    text_keys: slice  # the keys they attend over: the text (a source) or everything (a target)
    text_rule: Tensor  # [T, K_text]
    text_itself: Tensor  # [T, K_text]
    image: slice  # the image tokens
    text_first: bool  # the sequence is [text; image]
    query_index: Tensor  # [blocks, Q] sequence positions
    key_index: Tensor  # [blocks, K] sequence positions (text first, when the text is in view)
    rule: Tensor  # [blocks, Q, K]
    itself: Tensor  # [blocks, Q, K]
    image_order: Tensor | None  # [G]: raster token -> row of the block-major output; None: identity
    query_real: Tensor  # [blocks, Q] False for fill queries
    chunks: tuple[Chunk, ...]  # the blocks in consecutive groups, attended one group at a time


@functools.lru_cache(maxsize=64)
def block_plan(
    text_len: int,
    grid: tuple[int, int],
    direction: str,
    source_first: bool,
    pattern: SparsePattern,
    block: int | None,
    chunks: int,
    device: torch.device,
) -> BlockPlan:
    """The :class:`BlockPlan` of a layout geometry (blocks as in :func:`block_geometry`), its blocks
    split into ``chunks`` consecutive groups (at most one per block, sizes differing by at most one).

    Built outside inference mode even when called inside it: the cached index tensors must stay
    usable by a later training step (autograd refuses to save inference tensors).
    """
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    with torch.inference_mode(False):
        layout = ImageTextLayout(text_len, grid, direction, source_first)
        positions = torch.arange(layout.length, device=device)
        text = slice(layout.text_start, layout.text_start + text_len)
        image = slice(layout.image_start, layout.image_start + layout.image_len)
        text_keys = text if layout.image_is_target else slice(0, layout.length)
        text_q, text_k = positions[text, None], positions[None, text_keys]
        query_pos, key_pos = image_block_positions(layout, pattern, block, positions)
        query, key = query_pos[:, :, None], key_pos[:, None, :]
        real = query_pos >= 0
        query_index, key_index = query_pos.clamp(min=0), key_pos.clamp(min=0)
        return BlockPlan(
            text=text,
            text_keys=text_keys,
            text_rule=allowed_pairs(text_q, text_k, layout, pattern),
            text_itself=text_q == text_k,
            image=image,
            text_first=layout.text_start == 0,
            query_index=query_index,
            key_index=key_index,
            rule=allowed_pairs(query, key, layout, pattern) & (key >= 0),
            itself=((query == key) & (query >= 0)) | (query < 0),
            image_order=block_major_order(query_pos, layout),
            query_real=real,
            chunks=plan_chunks(query_index, key_index, real, chunks),
        )


def image_block_positions(
    layout: ImageTextLayout, pattern: SparsePattern, block: int | None, positions: Tensor
) -> tuple[Tensor, Tensor]:
    """Sequence positions of each image block's queries ``[blocks, Q]`` and keys ``[blocks, K]`` (-1 off
    the grid); a block of a target image also sees the text (its source), ahead of its image keys."""
    tile, halo = block_geometry(pattern, layout, block)
    image_grid = positions[layout.image_start : layout.image_start + layout.image_len].view(layout.grid)
    query_pos = to_blocks(image_grid, tile, (0, 0, 0, 0), -1)
    key_pos = to_blocks(image_grid, tile, halo, -1)
    text_len = layout.text_len
    if layout.image_is_target and text_len:
        text = positions[layout.text_start : layout.text_start + text_len]
        key_pos = torch.cat([text.expand(key_pos.shape[0], text_len), key_pos], 1)
    return query_pos, key_pos


def block_major_order(query_pos: Tensor, layout: ImageTextLayout) -> Tensor | None:
    """Raster image token -> row of the block-major output; ``None`` when they are the same order."""
    real = query_pos >= 0
    raster = (query_pos - layout.image_start).clamp(min=0)
    flat = torch.arange(query_pos.numel(), device=query_pos.device)
    if query_pos.numel() == layout.image_len and bool((raster.flatten() == flat).all()):
        return None
    order = torch.empty(layout.image_len, dtype=torch.long, device=query_pos.device)
    order[raster.flatten()[real.flatten()]] = flat[real.flatten()]
    return order


def plan_chunks(query_index: Tensor, key_index: Tensor, real: Tensor, chunks: int) -> tuple[Chunk, ...]:
    """The blocks in ``chunks`` consecutive groups, each with the fused-projection rows it reads."""
    groups = []
    for blocks in chunk_ranges(query_index.shape[0], chunks):
        queries, keys = query_index[blocks].flatten(), key_index[blocks].flatten()
        fill = not bool(real[blocks].all())
        groups.append(
            Chunk(
                blocks=blocks,
                query_rows=3 * queries,
                key_rows=3 * keys + 1,
                value_rows=3 * keys + 2,
                output_rows=queries,
                real=real[blocks].flatten() if fill else None,
            )
        )
    return tuple(groups)


def chunk_ranges(blocks: int, chunks: int) -> list[slice]:
    """``chunks`` (at most ``blocks``) consecutive ranges of blocks, sizes differing by at most one."""
    chunks = max(1, min(chunks, blocks))
    bounds = [round(i * blocks / chunks) for i in range(chunks + 1)]
    return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def padded(rule: Tensor, itself: Tensor, key_index: Tensor | slice, key_mask: Tensor | None) -> Tensor:
    """``(rule AND real key) OR itself`` with a leading batch dimension (1 without ``key_mask``)."""
    if key_mask is None:
        return (rule | itself)[None]
    keys = key_mask[:, key_index]  # [B, K] for a slice, [B, blocks, K] for block indices
    return (rule & keys.unsqueeze(-2)) | itself
