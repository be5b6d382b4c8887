"""ERNIE-ViLG (arXiv 2112.15283): one transformer for text→image and image→text over VQGAN codes.

The assembly works on **code ids**; turning pixels into codes and codes back into pixels is the
VQGAN's job (:mod:`vlp.models.vqgan.model`), done by the task. Both directions share every weight:

- **text → image**: the sequence is ``[text; image]``, the text is the source (bidirectional), the
  image the target (causal over the raster). The image slots hold ``[BOI, c_0, ..., c_{n-2}]`` and
  slot ``j`` predicts code ``c_j``; slot ``j`` carries the 2-D position of ``c_j`` (the cell it
  predicts).
- **image → text**: the sequence is ``[image; text]``, the image ``c_0 .. c_{n-1}`` is the source and
  the caption ``[CLS] w_1 .. [SEP]`` the target; text slot ``t`` predicts token ``t + 1``.

Every token gets a modality embedding (text / image) and a direction embedding (which of the two
tasks the sequence serves). Each layer attends under the UniLM seq2seq rule and its own pattern
(:mod:`vlp.models.ernie_vilg.sparse_patterns`): ``dense``, or ``row``/``column``/``conv`` over the image
(:func:`~vlp.models.ernie_vilg.sparse_patterns.ernie_vilg_schedule`). Key padding (text padding) is masked.

One output head maps a hidden state to ``vocab_size + num_codes`` logits, split into text logits
and image-code logits; :meth:`ERNIEViLG.text_logits` and :meth:`ERNIEViLG.image_logits` compute only
the half they need (the 30k-word half never runs on image slots). :attr:`ERNIEViLG.to_codebook`
maps image hidden states non-linearly into the VQGAN's codebook space for the end-to-end mode.

Incremental decoding (:meth:`ERNIEViLG.prefill`, :meth:`ERNIEViLG.extend`) keeps each layer's keys
and values in a :class:`KVCache`, so each new token costs one step. A cached step attends with dense
SDPA under the row of the layer's full pattern mask belonging to the new token: the keys it may not
see are either masked in that row or do not exist yet (they come later in the causal target), so the
result equals the full forward's, sparse layers included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlp.models.ernie_vilg.embeddings import ERNIEViLGEmbeddings
from vlp.models.ernie_vilg.sparse_attention import Implementation, SparseSelfAttention
from vlp.models.ernie_vilg.sparse_patterns import (
    DIRECTIONS,
    Direction,
    ImageTextLayout,
    ernie_vilg_schedule,
    pattern_mask,
)
from vlp.models.layers.attention import sdpa
from vlp.models.layers.transformer import TransformerEncoder, init_weights


def checked_sizes(grid: Sequence[int], vocab_size: int, num_codes: int, max_text_len: int) -> tuple[int, int]:
    """The code grid as ``(h, w)`` ints, after checking that every size is positive."""
    checked = tuple(int(g) for g in grid)
    if len(checked) != 2 or min(checked) < 1:
        raise ValueError(f"grid must be (h, w) with h, w >= 1, got {checked}")
    if vocab_size < 1 or num_codes < 1 or max_text_len < 1:
        raise ValueError(
            f"vocab_size, num_codes and max_text_len must be positive, got {vocab_size}, {num_codes}, "
            f"{max_text_len}"
        )
    return checked[0], checked[1]


@dataclass
class ERNIEViLGOutput:
    """Final hidden states of one pass and what the objectives need to read them.

    ``text_states`` / ``image_states`` are the slices of ``states`` by modality (views). In
    ``text_to_image`` image slot ``j`` predicts code ``j``; in ``image_to_text`` text slot ``t``
    predicts token ``t + 1``. ``decode_latents`` and ``codebook`` are attached by a task that trains
    end to end (the VQGAN's decoder on ``[B, C, h, w]`` latents and its ``[K, C]`` code vectors).
    """

    states: Tensor  # [B, N, D]
    layout: ImageTextLayout
    model: ERNIEViLG
    decode_latents: Any = None
    codebook: Tensor | None = None

    @property
    def text_states(self) -> Tensor:
        start = self.layout.text_start
        return self.states[:, start : start + self.layout.text_len]

    @property
    def image_states(self) -> Tensor:
        start = self.layout.image_start
        return self.states[:, start : start + self.layout.image_len]

    @property
    def direction(self) -> str:
        return self.layout.direction


@dataclass
class KVCache:
    """Per-layer keys and values ``[B, H, L, d]`` of the tokens so far, for :meth:`ERNIEViLG.extend`.

    ``masks`` holds, per pattern kind, the full ``[B or 1, 1, N, N]`` mask of the complete sequence
    (``layout``); step ``t`` reads its row. ``length`` counts the cached tokens.
    """

    keys: list[Tensor]
    values: list[Tensor]
    masks: dict[str, Tensor]
    layout: ImageTextLayout
    length: int
    extra: dict[str, Tensor] = field(default_factory=dict)

    def index_select(self, index: Tensor) -> KVCache:
        """Rows ``index`` of every per-sample tensor (beam search reorders with this)."""

        def rows(t: Tensor) -> Tensor:
            return t if t.shape[0] == 1 else t.index_select(0, index)

        return replace(
            self,
            keys=[k.index_select(0, index) for k in self.keys],
            values=[v.index_select(0, index) for v in self.values],
            masks={kind: rows(m) for kind, m in self.masks.items()},
            extra={name: t.index_select(0, index) for name, t in self.extra.items()},
        )


class ERNIEViLG(nn.Module):
    """The ERNIE-ViLG transformer over ``[text; image codes]`` / ``[image codes; text]`` (module docstring).

    Args:
        vocab_size: text vocabulary (the tokenizer's).
        num_codes: VQGAN codebook size; the code table has one more row, the BOI token.
        grid: ``(h, w)`` of the code grid (e.g. 8x8 for 64 px and a VQGAN of factor 8).
        dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer.
        max_text_len: longest text (learned positions).
        patterns: the attention pattern of each layer (``dense``/``row``/``column``/``conv``);
            ``None``: the paper's schedule when ``sparse``, all ``dense`` otherwise.
        sparse: use the paper's sparse schedule when ``patterns`` is ``None``.
        context, kernel_size: of the row/column and conv patterns (:class:`SparsePattern`).
        implementation: ``blocked`` sparse kernels or the ``dense`` full-mask reference.
        code_dim: width of the VQGAN codebook; ``None``: no :attr:`to_codebook` head (two-stage only).
        pad_id: text padding id (its embedding stays zero).
        drop, attn_drop, drop_path: dropout rates.
        activation_checkpointing: recompute each block in backward.
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        num_codes: int = 8192,
        grid: tuple[int, int] = (32, 32),
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        max_text_len: int = 64,
        patterns: Sequence[str] | None = None,
        sparse: bool = True,
        context: int = 0,
        kernel_size: int = 5,
        implementation: Implementation = "blocked",
        code_dim: int | None = None,
        pad_id: int = 0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        grid = checked_sizes(grid, vocab_size, num_codes, max_text_len)
        if patterns is None and not sparse:
            patterns = ["dense"] * depth
        self.patterns = ernie_vilg_schedule(depth, patterns)
        self.dim, self.vocab_size, self.num_codes = dim, vocab_size, num_codes
        self.grid: tuple[int, int] = grid
        self.max_text_len, self.pad_id, self.code_dim = max_text_len, pad_id, code_dim
        self.boi_id = num_codes

        self.embeddings = ERNIEViLGEmbeddings(vocab_size, num_codes, grid, dim, max_text_len, pad_id)
        self.embed_drop = nn.Dropout(drop)

        attention = [
            partial(
                SparseSelfAttention,
                pattern=kind,
                context=context,
                kernel_size=kernel_size,
                implementation=implementation,
            )
            for kind in self.patterns
        ]
        self.encoder = TransformerEncoder(
            dim, depth, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path,
            activation_checkpointing=activation_checkpointing, attn_layer=attention,
        )  # fmt: skip
        self.head = nn.Linear(dim, vocab_size + num_codes)
        self.to_codebook = (
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, code_dim))
            if code_dim is not None
            else None
        )
        for module in (self.head, self.to_codebook):
            if module is not None:
                module.apply(init_weights)

    # ----------------------------------------------------------------------------------- inputs

    def image_inputs(self, codes: Tensor, direction: Direction) -> Tensor:
        """The image slots' ids: ``codes`` as they are for a source image, ``[BOI, c_0 .. c_{n-2}]``
        for a target (so slot ``j`` predicts ``c_j``)."""
        if direction == "image_to_text":
            return codes
        boi = torch.full_like(codes[:, :1], self.boi_id)
        return torch.cat([boi, codes[:, :-1]], dim=1)

    # ------------------------------------------------------------------------------ full passes

    def check_inputs(self, text_ids: Tensor, text_mask: Tensor | None, image_codes: Tensor) -> None:
        image_len = self.grid[0] * self.grid[1]
        if text_ids.dim() != 2 or image_codes.dim() != 2:
            raise ValueError(
                f"text_ids and image_codes must be [B, L] and [B, h*w], got {tuple(text_ids.shape)} and "
                f"{tuple(image_codes.shape)}"
            )
        if image_codes.shape[1] != image_len:
            raise ValueError(
                f"image_codes has {image_codes.shape[1]} codes per image, the {self.grid} grid {image_len}"
            )
        if text_ids.shape[0] != image_codes.shape[0]:
            raise ValueError(f"text_ids has {text_ids.shape[0]} rows, image_codes {image_codes.shape[0]}")
        if text_mask is not None and text_mask.shape != text_ids.shape:
            raise ValueError(
                f"text_mask {tuple(text_mask.shape)} must match text_ids {tuple(text_ids.shape)}"
            )

    def layout(self, text_len: int, text_mask: Tensor | None, direction: Direction) -> ImageTextLayout:
        """The sequence layout of a pass: always ``[source; target]``; ``key_mask`` from the text mask."""
        key_mask = None
        if text_mask is not None:
            image = torch.ones(
                text_mask.shape[0], self.grid[0] * self.grid[1], dtype=torch.bool, device=text_mask.device
            )
            text = text_mask.bool()
            key_mask = torch.cat([text, image] if direction == "text_to_image" else [image, text], dim=1)
        return ImageTextLayout(text_len, self.grid, direction, True, key_mask)

    def forward(
        self, text_ids: Tensor, text_mask: Tensor | None, image_codes: Tensor, direction: Direction
    ) -> ERNIEViLGOutput:
        """One teacher-forced pass in ``direction`` (see the module docstring for the slots).

        Args:
            text_ids: ``[B, T]`` token ids (the source text, or the target caption ``[CLS] .. [SEP]``).
            text_mask: ``[B, T]`` True for real tokens (``None``: all real).
            image_codes: ``[B, h*w]`` code ids in raster order (the target image, or the source image).
            direction: ``text_to_image`` or ``image_to_text``.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.check_inputs(text_ids, text_mask, image_codes)
        text = self.embeddings.text(text_ids, direction)
        image = self.embeddings.codes(self.image_inputs(image_codes, direction), direction)
        x = torch.cat([text, image] if direction == "text_to_image" else [image, text], dim=1)
        x = self.embed_drop(x)
        layout = self.layout(text_ids.shape[1], text_mask, direction)
        return ERNIEViLGOutput(self.encoder(x, layout), layout, self)

    # ------------------------------------------------------------------------------------ heads

    def text_logits(self, states: Tensor) -> Tensor:
        """The text half of the output head: ``[..., D] → [..., vocab_size]``."""
        bias = None if self.head.bias is None else self.head.bias[: self.vocab_size]
        return F.linear(states, self.head.weight[: self.vocab_size], bias)

    def image_logits(self, states: Tensor) -> Tensor:
        """The image-code half of the output head: ``[..., D] → [..., num_codes]``."""
        bias = None if self.head.bias is None else self.head.bias[self.vocab_size :]
        return F.linear(states, self.head.weight[self.vocab_size :], bias)

    def map_to_codebook(self, image_states: Tensor) -> Tensor:
        """Image hidden states ``[B, h*w, D]`` → latents ``[B, code_dim, h, w]`` (end-to-end mode)."""
        if self.to_codebook is None:
            raise ValueError(
                "ERNIEViLG was built without code_dim: it has no to_codebook head (end-to-end mode)"
            )
        z = self.to_codebook(image_states)
        return z.transpose(1, 2).reshape(z.shape[0], -1, *self.grid)

    # ----------------------------------------------------------------------- incremental decoding

    def _masks(self, layout: ImageTextLayout, device: torch.device) -> dict[str, Tensor]:
        return {
            kind: pattern_mask(
                kind,
                layout.grid,
                layout.text_len,
                layout.direction,
                key_mask=layout.key_mask,
                context=block.attn.pattern.context,
                kernel_size=block.attn.pattern.kernel_size,
            ).to(device)
            for kind, block in {b.attn.pattern.kind: b for b in self.encoder.blocks}.items()
        }

    def _step_layers(self, x: Tensor, cache: KVCache) -> Tensor:
        """Run the new tokens ``x [B, t, D]`` (positions ``cache.length ..``) through every layer."""
        start, stop = cache.length, cache.length + x.shape[1]
        for index, block in enumerate(self.encoder.blocks):
            attn = block.attn
            batch, length, dim = x.shape
            heads = attn.num_heads
            qkv = attn.qkv(block.norm1(x)).view(batch, length, 3, heads, dim // heads)
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
            keys = torch.cat([cache.keys[index], k], 2) if cache.keys[index].numel() else k
            values = torch.cat([cache.values[index], v], 2) if cache.values[index].numel() else v
            cache.keys[index], cache.values[index] = keys, values
            mask = cache.masks[attn.pattern.kind][:, :, start:stop, :stop]
            out = sdpa(q, keys, values, attn_mask=mask)
            x = x + attn.proj(out.transpose(1, 2).reshape(batch, length, dim))
            x = x + block.mlp(block.norm2(x))
        cache.length = stop
        return self.encoder.norm(x)

    def _empty_cache(self, layout: ImageTextLayout, batch: int, device: torch.device) -> KVCache:
        empty = torch.empty(batch, 0, device=device)
        return KVCache(
            [empty] * len(self.encoder.blocks),
            [empty] * len(self.encoder.blocks),
            self._masks(layout, device),
            layout,
            0,
        )

    def prefill(
        self,
        direction: Direction,
        *,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        image_codes: Tensor | None = None,
        max_text_len: int | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Encode the source and the first target token(s); the last state ``[B, D]`` and the cache.

        - ``text_to_image``: ``text_ids`` (and ``text_mask``) are the source; the first target token
          is BOI. The returned state predicts code 0.
        - ``image_to_text``: ``image_codes`` are the source and ``text_ids`` the prompt (e.g. the
          ``[CLS]`` column); ``max_text_len`` is the whole caption's length the cache allows. The
          returned state predicts the token after the prompt.
        """
        if direction == "text_to_image":
            if text_ids is None:
                raise ValueError("text_to_image prefill needs text_ids (the prompt)")
            layout = self.layout(text_ids.shape[1], text_mask, direction)
            boi = torch.full((text_ids.shape[0], 1), self.boi_id, dtype=torch.long, device=text_ids.device)
            x = torch.cat(
                [self.embeddings.text(text_ids, direction), self.embeddings.codes(boi, direction)], 1
            )
        elif direction == "image_to_text":
            if image_codes is None or text_ids is None:
                raise ValueError(
                    "image_to_text prefill needs image_codes (the source) and text_ids (the prompt)"
                )
            total = max_text_len or self.max_text_len
            if not text_ids.shape[1] <= total <= self.max_text_len:
                raise ValueError(
                    f"max_text_len must be in [prompt length {text_ids.shape[1]}, {self.max_text_len}], got {total}"
                )
            self.check_inputs(text_ids, None, image_codes)
            layout = self.layout(total, None, direction)
            x = torch.cat(
                [self.embeddings.codes(image_codes, direction), self.embeddings.text(text_ids, direction)], 1
            )
        else:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        cache = self._empty_cache(layout, x.shape[0], x.device)
        states = self._step_layers(x, cache)
        return states[:, -1], cache

    def extend(self, token: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        """Append one token ``[B]`` or ``[B, 1]`` (the code or word just chosen); its state ``[B, D]``.

        The state predicts the next token. The cache is updated in place and returned.
        """
        return self.append(token.view(-1, 1), cache)[:, -1], cache

    def append(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """Append ``tokens [B, t]`` of the target at once; the states of all of them ``[B, t, D]``.

        Each appended token reads the cache and the appended tokens before it (the target is causal),
        so the states equal a full pass's. Used to score given texts over one cached source image. The
        cache is updated in place.
        """
        layout = cache.layout
        if cache.length + tokens.shape[1] > layout.length:
            raise ValueError(
                f"the cache holds {cache.length} of {layout.length} tokens: {tokens.shape[1]} more do not fit"
            )
        if layout.direction == "text_to_image":
            slot = cache.length - layout.text_len
            x = self.embeddings.codes(tokens, "text_to_image", start=slot)
        else:
            x = self.embeddings.text(tokens, "image_to_text", start=cache.length - layout.image_len)
        return self._step_layers(x, cache)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, patterns={self.patterns}"
