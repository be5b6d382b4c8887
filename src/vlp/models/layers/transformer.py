"""Attention on ``F.scaled_dot_product_attention``, pre-LN blocks, the encoder, and mask builders.

Masks are boolean with True = "may attend", the convention of SDPA. A key-padding mask is
broadcast as ``[B, 1, 1, N]``; a full ``[B, 1, N, N]`` mask is built only where a pattern needs one.
Parameter names follow timm's ViT (``norm1``, ``attn.qkv``, ``attn.proj``, ``mlp.fc1`` ...), so ViT
and official ViLT checkpoints map onto these blocks key by key.
"""

from __future__ import annotations

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
    """Multi-head self-attention with a fused QKV projection."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """``[B, N, D]`` → ``[B, N, D]``; with ``rows`` (``[B, K]`` indices) only those rows' outputs,
        ``[B, K, D]``: every row is still a key and a value, but queries are projected for ``rows`` only."""
        if rows is not None:
            return self.forward_rows(x, attn_mask, rows)
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        # Views [B, H, N, d] into the [B, N, 3, H, d] projection. Unbinding dim 2 (not a permuted dim 0)
        # lets backward stack the three gradients straight into the projection's layout: one copy, not two.
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        out = sdpa(q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, length, dim)))

    def forward_rows(self, x: Tensor, attn_mask: Tensor | None, rows: Tensor) -> Tensor:
        batch, length, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        # split, not two slices: its backward is one cat, where each slice's would fill a [3D, D] zeros
        q_weight, kv_weight = self.qkv.weight.split([dim, 2 * dim])
        q_bias, kv_bias = (None, None) if self.qkv.bias is None else self.qkv.bias.split([dim, 2 * dim])
        queries = x.gather(1, rows[..., None].expand(-1, -1, dim))
        q = F.linear(queries, q_weight, q_bias)
        kv = F.linear(x, kv_weight, kv_bias)
        q = q.view(batch, -1, heads, head_dim).transpose(1, 2)
        k, v = (t.transpose(1, 2) for t in kv.view(batch, length, 2, heads, head_dim).unbind(2))
        if attn_mask is not None and attn_mask.shape[-2] > 1:  # a per-query mask: keep the rows' own
            full = attn_mask.expand(batch, attn_mask.shape[1], length, attn_mask.shape[-1])
            index = rows[:, None, :, None].expand(-1, full.shape[1], -1, full.shape[-1])
            attn_mask = full.gather(2, index)
        out = sdpa(q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, -1, dim)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

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
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """``[B, N, D]`` → ``[B, N, D]``, or only the rows ``rows`` (``[B, K]`` indices) names, ``[B, K, D]``."""
        if rows is None:  # (subclasses with another attention module use this path only)
            x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        else:
            residual = x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))
            x = residual + self.drop_path(self.attn(self.norm1(x), attn_mask, rows))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """A stack of pre-LN blocks with a final LayerNorm; optional activation checkpointing per block."""

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
    ) -> None:
        super().__init__()
        self.dim = dim
        self.activation_checkpointing = activation_checkpointing
        rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path] * depth
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, rate, norm_eps) for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.apply(init_weights)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """``[B, N, D]`` → ``[B, N, D]``.

        ``rows`` (``[B, K]`` indices, e.g. from :func:`row_index`) asks for those rows of the output only,
        ``[B, K, D]``. The rows below the last layer are all needed (they are its keys and values), but
        the last layer's query projection, attention output, MLP and the final norm then run for ``K``
        rows instead of ``N``: for MLM, which reads the ~15 % masked text rows and ``[CLS]``, that is
        most of a layer's work saved (official ViLT and transformers compute every row).
        """
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            args = (x, attn_mask) if rows is None or i < last else (x, attn_mask, rows)
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
