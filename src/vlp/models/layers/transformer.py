"""Attention on ``F.scaled_dot_product_attention``, the one pre-LN block, the encoder, and mask builders.

Masks are boolean with True = "may attend", the convention of SDPA. A key-padding mask is
broadcast as ``[B, 1, 1, N]``; a full ``[B, 1, N, N]`` mask is built only where a pattern needs one.
Parameter names follow timm's ViT (``norm1``, ``attn.qkv``, ``attn.proj``, ``mlp.fc1`` ...), so ViT
and official ViLT checkpoints map onto these blocks key by key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vlp.models.layers.attention import sdpa


def key_padding_mask(mask: Tensor) -> Tensor:
    """``[B, N]`` True-for-real → ``[B, 1, 1, N]`` attention mask for SDPA."""
    return mask[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention with the three projections stacked in one ``qkv`` linear (``q; k; v`` rows,
    the layout of timm's ViT and of ``nn.MultiheadAttention.in_proj_weight``), on SDPA.

    ``forward`` is self-attention, with two options the blocks use: ``pos`` (DETR's positions, added to
    the queries and keys, never to the values) and ``rows`` (queries for some rows only). The decoder's
    cross-attention and its cached steps use the pieces: :meth:`project_q`, :meth:`project_kv`,
    :meth:`attend`.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        rows: Tensor | None = None,
        pos: Tensor | None = None,
    ) -> Tensor:
        """``[B, N, D]`` → ``[B, N, D]``; with ``rows`` (``[B, K]`` indices) only those rows' outputs,
        ``[B, K, D]``: every row is still a key and a value, but queries are projected for ``rows`` only.
        ``pos`` (``[B, N, D]``) is added to the queries' and keys' input."""
        if rows is not None or pos is not None:
            return self.attend(
                *self._project_self(x, rows, pos), self._rows_mask(attn_mask, rows, x.shape[1])
            )
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        # Views [B, H, N, d] into the [B, N, 3, H, d] projection. Unbinding dim 2 (not a permuted dim 0)
        # lets backward stack the three gradients straight into the projection's layout: one copy, not two.
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        return self.attend(q, k, v, attn_mask)

    def _project_self(
        self, x: Tensor, rows: Tensor | None, pos: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention's heads when queries are a subset of rows or positions are added."""
        dim = self.dim
        qk_input = x if pos is None else x + pos
        if rows is None:  # positions only: q and k share one matrix multiply
            q, k = self._linear(qk_input, 0, 2).chunk(2, dim=-1)
            return self._heads(q), self._heads(k), self._heads(self._linear(x, 2, 3))
        # split, not two slices: its backward is one cat, where each slice's would fill a [3D, D] zeros
        q_weight, kv_weight = self.qkv.weight.split([dim, 2 * dim])
        q_bias, kv_bias = (None, None) if self.qkv.bias is None else self.qkv.bias.split([dim, 2 * dim])
        queries = qk_input.gather(1, rows[..., None].expand(-1, -1, dim))
        q = self._heads(F.linear(queries, q_weight, q_bias))
        if pos is None:
            batch, length, _ = x.shape
            kv = F.linear(x, kv_weight, kv_bias).view(batch, length, 2, self.num_heads, dim // self.num_heads)
            k, v = (t.transpose(1, 2) for t in kv.unbind(2))
            return q, k, v
        return (q, *self.project_kv(qk_input, x))

    @staticmethod
    def _rows_mask(attn_mask: Tensor | None, rows: Tensor | None, length: int) -> Tensor | None:
        """A per-query mask (``[B, 1, N, N]``) keeps the rows of ``rows`` only; a key mask is kept."""
        if rows is None or attn_mask is None or attn_mask.shape[-2] == 1:
            return attn_mask
        batch = rows.shape[0]
        full = attn_mask.expand(batch, attn_mask.shape[1], length, attn_mask.shape[-1])
        index = rows[:, None, :, None].expand(-1, full.shape[1], -1, full.shape[-1])
        return full.gather(2, index)

    def _linear(self, x: Tensor, first: int, last: int) -> Tensor:
        """Projections ``first .. last - 1`` (0 = q, 1 = k, 2 = v) of ``x`` in one matrix multiply."""
        rows = slice(first * self.dim, last * self.dim)
        bias = None if self.qkv.bias is None else self.qkv.bias[rows]
        return F.linear(x, self.qkv.weight[rows], bias)

    def _heads(self, x: Tensor) -> Tensor:
        """``[B, N, D]`` → ``[B, H, N, D / H]``."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def project_q(self, query: Tensor) -> Tensor:
        """Query heads ``[B, H, Nq, D / H]`` of ``query``."""
        return self._heads(self._linear(query, 0, 1))

    def project_kv(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Key and value heads; one matrix multiply when ``key`` is ``value``."""
        if key is value:
            k, v = self._linear(key, 1, 3).chunk(2, dim=-1)
        else:
            k, v = self._linear(key, 1, 2), self._linear(value, 2, 3)
        return self._heads(k), self._heads(v)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """SDPA over projected heads, then the output projection: ``[B, Nq, D]``."""
        out = sdpa(q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0)
        batch, _, length, _ = out.shape
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, length, self.dim)))


AttentionLayer = Callable[..., nn.Module]
"""Builds a block's attention: called as ``attn_layer(dim, num_heads, qkv_bias=, attn_drop=, proj_drop=)``
(timm's ``attn_layer``). :class:`Attention` by default; ERNIE-ViLG passes its sparse attention, whose
``forward(x, layout)`` receives the block's second argument as it is."""


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Args:
        attn_layer: the attention (see :data:`AttentionLayer`).
        Others: width, heads, MLP ratio and the dropout rates, as timm's ViT block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        attn_layer: AttentionLayer = Attention,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn_layer(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(
        self, x: Tensor, attn_mask: Any = None, rows: Tensor | None = None, pos: Tensor | None = None
    ) -> Tensor:
        """``[B, N, D]`` → ``[B, N, D]``, or only the rows ``rows`` (``[B, K]`` indices) names, ``[B, K, D]``.

        ``pos`` (``[B, N, D]``) is added to the attention's queries and keys (DETR's ``with_pos_embed``);
        the residual stream and the values never carry it. ``attn_mask`` goes to the attention as it is.
        """
        if rows is None and pos is None:  # the only call an attn_layer must take
            x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        else:
            residual = x if rows is None else x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))
            x = residual + self.drop_path(self.attn(self.norm1(x), attn_mask, rows=rows, pos=pos))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """A stack of pre-LN blocks with a final LayerNorm; optional activation checkpointing per block.

    Args:
        attn_layer: every block's attention (``None``: :class:`Attention`), or one per block (a sequence
            of ``depth``): ERNIE-ViLG gives each layer its own sparse pattern.
        Others: as :class:`Block`; ``drop_path`` rises linearly from 0 to this rate over the depth.
    """

    def __init__(
        self,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        activation_checkpointing: bool = False,
        attn_layer: AttentionLayer | Sequence[AttentionLayer] | None = None,
    ) -> None:
        super().__init__()
        attn_layer = Attention if attn_layer is None else attn_layer
        layers = list(attn_layer) if isinstance(attn_layer, Sequence) else [attn_layer] * depth
        if len(layers) != depth:
            raise ValueError(f"attn_layer lists {len(layers)} attention layers for a depth of {depth}")
        self.dim = dim
        self.activation_checkpointing = activation_checkpointing
        # on the CPU, so that a model built under a meta device (sizing a paper-scale model) can read them
        rates = (
            torch.linspace(0, drop_path, depth, device="cpu").tolist() if depth > 1 else [drop_path] * depth
        )
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, rate, norm_eps, layer)
            for rate, layer in zip(rates, layers, strict=True)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.apply(init_weights)

    def forward(
        self, x: Tensor, attn_mask: Any = None, rows: Tensor | None = None, pos: Tensor | None = None
    ) -> Tensor:
        """``[B, N, D]`` → ``[B, N, D]``.

        ``pos`` (``[B, N, D]``, zeros where a token has none) is added to the queries and keys of every
        block (DETR's encoder); without it the positions, if any, are part of ``x``.

        ``rows`` (``[B, K]`` indices, e.g. from :func:`row_index`) asks for those rows of the output only,
        ``[B, K, D]``. The rows below the last layer are all needed (they are its keys and values), but
        the last layer's query projection, attention output, MLP and the final norm then run for ``K``
        rows instead of ``N``: for MLM, which reads the ~15 % masked text rows and ``[CLS]``, that is
        most of a layer's work saved (official ViLT and transformers compute every row).
        """
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            block_rows = rows if i == last else None
            if block_rows is None and pos is None:
                args: tuple[Any, ...] = (x, attn_mask)
            else:
                args = (x, attn_mask, block_rows, pos)
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
        return self.norm(x)


def row_index(wanted: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, N]`` bool → (``[B, K]`` indices of the True rows, in order, ``[B, K]`` valid), ``K`` the
    largest count in the batch; a sample with fewer rows is padded with its first row's index."""
    count = int(wanted.sum(1).max())
    order = wanted.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :count]
    valid = wanted.gather(1, order)
    return torch.where(valid, order, order[:, :1]), valid


def init_weights(module: nn.Module) -> None:
    """ViT/BERT initialisation: truncated normal (std 0.02) linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
