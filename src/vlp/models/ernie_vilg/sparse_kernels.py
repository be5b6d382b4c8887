"""The sparse attention's forward kernels, on ``F.scaled_dot_product_attention``.

:func:`dense_pattern_attention` is the reference: one SDPA call under the full ``[B, 1, N, N]`` pattern
mask. :func:`blocked_forward` attends the text queries in one call and the image queries block by block
(:mod:`vlp.models.ernie_vilg.sparse_blocks`), each block with only the keys its pattern can admit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.models.ernie_vilg.sparse_blocks import BlockPlan, Chunk
from vlp.models.ernie_vilg.sparse_patterns import ImageTextLayout, SparsePattern, pattern_mask
from vlp.models.layers.attention import sdpa


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
