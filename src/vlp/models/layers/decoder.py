"""A DETR-style transformer decoder: self-attention, cross-attention to an encoder memory, MLP.

One decoder serves two kinds of queries (E2E-VLP): N learned object queries for detection (no
self-attention mask; DETR's query positions added to queries and keys at every layer) and caption
tokens for captioning (causal + padding self-attention mask), with the same weights.

Layers are **pre-LN** (``x + attn(norm(x))``), not DETR's post-LN: the fusion encoder in
:mod:`vlp.models.layers.transformer` is pre-LN, and pre-LN trains without DETR's careful warm-up on a small
budget. As in DETR's ``normalize_before`` variant, a final LayerNorm closes the stack and is applied
to every layer's output when the intermediate outputs are returned (one head serves all layers for
the auxiliary losses). Masks are boolean, True = "may attend" (SDPA's convention).

Incremental decoding keeps a :class:`DecoderCache`: per layer the self-attention keys and values of
the positions decoded so far and the cross-attention keys and values of the memory (projected once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from vlp.models.layers.transformer import Attention, init_weights, key_padding_mask


@dataclass
class LayerCache:
    """One layer's keys and values ``[B, H, N, D / H]``; ``None`` until first computed."""

    self_k: Tensor | None = None
    self_v: Tensor | None = None
    cross_k: Tensor | None = None
    cross_v: Tensor | None = None


@dataclass
class DecoderCache:
    """Keys and values of every layer for incremental (token by token) decoding.

    The decoder appends the new positions' self-attention keys and values in place; ``index_select``
    picks batch rows (beam search reorders hypotheses with it).
    """

    layers: list[LayerCache] = field(default_factory=list)

    @classmethod
    def empty(cls, depth: int) -> DecoderCache:
        return cls([LayerCache() for _ in range(depth)])

    @property
    def length(self) -> int:
        """Positions decoded so far."""
        first = self.layers[0].self_k if self.layers else None
        return 0 if first is None else first.shape[2]

    def index_select(self, index: Tensor) -> DecoderCache:
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, index)

        return DecoderCache(
            [
                LayerCache(pick(c.self_k), pick(c.self_v), pick(c.cross_k), pick(c.cross_v))
                for c in self.layers
            ]
        )


ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


class DecoderLayer(nn.Module):
    """Pre-LN: ``x + self_attn(norm1(x))``, ``x + cross_attn(norm2(x), memory)``, ``x + mlp(norm3(x))``;
    with ``post_norm`` (DETR's published decoders, BERT's layout): ``norm1(x + self_attn(x))`` and so on.

    Positions follow DETR: ``query_pos`` is added to the queries and keys of the self-attention and to
    the queries of the cross-attention; ``memory_pos`` to the memory's keys. Values never carry them.

    Args:
        post_norm: LayerNorm after each residual sum instead of before each sub-layer.
        activation: of the MLP, ``gelu`` or ``relu`` (DETR).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        norm_eps: float = 1e-6,
        post_norm: bool = False,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=ACTIVATIONS[activation], drop=drop)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        self_mask: Tensor | None = None,
        query_pos: Tensor | None = None,
        memory_pos: Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        h = self._sublayer_input(self.norm1, x)
        if cache is None:
            x = self._residual(self.norm1, x, self.self_attn(h, self_mask, pos=query_pos))
        else:
            qk = h if query_pos is None else h + query_pos
            q = self.self_attn.project_q(qk)
            k, v = self.self_attn.project_kv(qk, h)
            if cache.self_k is not None:
                k, v = torch.cat([cache.self_k, k], dim=2), torch.cat([cache.self_v, v], dim=2)
            cache.self_k, cache.self_v = k, v
            x = self._residual(self.norm1, x, self.self_attn.attend(q, k, v, self_mask))

        h = self._sublayer_input(self.norm2, x)
        q = self.cross_attn.project_q(h if query_pos is None else h + query_pos)
        if cache is not None and cache.cross_k is not None:
            k, v = cache.cross_k, cache.cross_v
        else:
            k, v = self.cross_attn.project_kv(memory if memory_pos is None else memory + memory_pos, memory)
            if cache is not None:
                cache.cross_k, cache.cross_v = k, v
        x = self._residual(self.norm2, x, self.cross_attn.attend(q, k, v, memory_mask))
        return self._residual(self.norm3, x, self.mlp(self._sublayer_input(self.norm3, x)))

    def _sublayer_input(self, norm: nn.LayerNorm, x: Tensor) -> Tensor:
        return x if self.post_norm else norm(x)

    def _residual(self, norm: nn.LayerNorm, x: Tensor, update: Tensor) -> Tensor:
        return norm(x + update) if self.post_norm else x + update


def causal_mask(
    num_queries: int, num_keys: int, device: torch.device, padding_mask: Tensor | None = None
) -> Tensor:
    """Query ``i`` (position ``num_keys - num_queries + i``) may attend keys at or before it.

    Without ``padding_mask`` the mask is ``[Nq, Nk]``. With it (``[B, Nk]``, True = real) it is
    ``[B, 1, Nq, Nk]``: padded keys are hidden too, except a position always sees itself, so the rows of
    padded queries are never empty (SDPA would return NaN for them).
    """
    offset = num_keys - num_queries
    query = torch.arange(num_queries, device=device)[:, None] + offset
    key = torch.arange(num_keys, device=device)[None, :]
    allowed = key <= query
    if padding_mask is None:
        return allowed
    if padding_mask.shape[-1] != num_keys:
        raise ValueError(
            f"padding_mask covers {padding_mask.shape[-1]} positions, but there are {num_keys} keys"
        )
    allowed = (allowed[None] & padding_mask.bool()[:, None, :]) | (key == query)[None]
    return allowed[:, None]


class TransformerDecoder(nn.Module):
    """A stack of :class:`DecoderLayer` (pre-LN, or post-LN with ``post_norm``) with a final LayerNorm.

    ``forward`` returns ``[L, B, T, D]``: every layer's output through the final norm (DETR's
    ``return_intermediate``, what the detection objective's auxiliary losses read), or ``[1, B, T, D]``,
    the last layer only, with ``return_intermediate=False``.
    """

    def __init__(
        self,
        dim: int = 256,
        depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        norm_eps: float = 1e-6,
        post_norm: bool = False,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.dim = dim
        self.depth = depth
        self.layers = nn.ModuleList(
            DecoderLayer(
                dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, norm_eps, post_norm, activation
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.apply(init_weights)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        query_pos: Tensor | None = None,
        memory_pos: Tensor | None = None,
        causal: bool = False,
        padding_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
        return_intermediate: bool = True,
        query_mask: Tensor | None = None,
    ) -> Tensor:
        """Decode ``x [B, T, D]`` against ``memory [B, N, D]``.

        Args:
            memory_mask: ``[B, N]``, True on real memory tokens.
            query_pos: ``[B or 1, T, D]`` added to queries and keys at every layer (object queries).
            memory_pos: ``[B, N, D]`` added to the memory's keys at every layer (DETR's visual positions).
            causal: each position attends only to itself and earlier ones (captions).
            padding_mask: ``[B, T_total]``, True on real positions of the decoded sequence (with a cache,
                ``T_total`` counts the cached positions too).
            cache: decode incrementally: ``x`` holds only the new positions; the cache is updated in place.
            query_mask: ``[T, T]`` bool, True where position ``i`` may attend to ``j`` in the self-attention
                (object query groups kept apart); not with ``causal`` or ``padding_mask``.
        """
        if x.shape[-1] != self.dim or memory.shape[-1] != self.dim:
            raise ValueError(
                f"decoder width is {self.dim}, got x {tuple(x.shape)} and memory {tuple(memory.shape)}"
            )
        if cache is not None and len(cache.layers) != self.depth:
            raise ValueError(f"cache has {len(cache.layers)} layers, the decoder {self.depth}")
        length = x.shape[1]
        total = length + (cache.length if cache is not None else 0)
        if query_mask is not None:
            if causal or padding_mask is not None or query_mask.shape != (length, total):
                raise ValueError(
                    f"query_mask must be [T, T] = {(length, total)} and without causal or padding_mask, "
                    f"got {tuple(query_mask.shape)}, causal={causal}, padding_mask given: {padding_mask is not None}"
                )
            self_mask = query_mask.bool()
        elif causal:
            self_mask = causal_mask(length, total, x.device, padding_mask)
        elif padding_mask is not None:
            self_mask = key_padding_mask(padding_mask.bool())
        else:
            self_mask = None
        cross_mask = key_padding_mask(memory_mask.bool()) if memory_mask is not None else None
        outputs = []
        for index, layer in enumerate(self.layers):
            layer_cache = cache.layers[index] if cache is not None else None
            x = layer(x, memory, cross_mask, self_mask, query_pos, memory_pos, layer_cache)
            if return_intermediate:
                outputs.append(self.norm(x))
        if not return_intermediate:
            return self.norm(x)[None]
        return torch.stack(outputs)
