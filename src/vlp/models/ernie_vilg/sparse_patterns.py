"""ERNIE-ViLG's attention patterns: the sequence layout, the rule, the dense mask and the layer schedule.

One transformer serves both directions (ERNIE-ViLG, arXiv 2112.15283): text→image generation reads
``[text; image codes]`` with the text as source and the image as target, image→text reads ``[image
codes; text]`` with the image as source. Every attention layer applies the UniLM seq2seq rule
(:mod:`vlp.models.ernie_vilg.seq2seq_mask`) and, on the image, a sparse pattern. The paper names the patterns
(row, column, convolutional, after DALL·E) but not their exact masks; these are the definitions here.

Image token ``(r, c)`` of an ``h x w`` grid sits at raster position ``r * w + c`` of the image
segment. A pattern only restricts **image query → image key** pairs; it admits key ``(r', c')`` for
query ``(r, c)`` when

- ``dense``: always;
- ``row``: ``|r' - r| <= context`` (the query's own row; ``context`` more rows on each side);
- ``column``: ``|c' - c| <= context`` (own column, ``context`` more columns on each side);
- ``conv``: ``|r' - r| <= k // 2`` and ``|c' - c| <= k // 2`` (a centred ``k x k`` window, ``k`` odd).

The final mask is ``seq2seq rule AND pattern AND key padding``, plus every position seeing itself:

- **text → image** (image = target, causal over the raster): an image query sees all real text and
  the image keys of its pattern at or before its own raster position: ``row`` = the earlier tokens of
  its row (with ``context`` R also the R rows above, whole), ``column`` = the same column in earlier
  rows (with R also the R columns either side, rows above and, left of it, its own row), ``conv`` = the
  causal half of the window (the ``k // 2`` rows above within ``k // 2`` columns, and the tokens to its
  left in its row), the masks of lucidrains/DALLE-pytorch's axial and convolutional causal attention.
  Text queries (source) see all real text bidirectionally and no image token.
- **image → text** (image = source, bidirectional): an image query sees its whole row / column /
  window and no text; a text query (target) sees the whole image (the pattern is about image pairs
  only) and the text at or before it.

``context = 0`` (own row/column only) is the axial form and the default: it is the cheapest, and the
schedule's column layer (every fourth) and final ``conv`` layer carry information across rows.
``context = 1`` covers Sparse Transformer's "previous ``w`` tokens" row window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from vlp.models.ernie_vilg.seq2seq_mask import seq2seq_allowed, seq2seq_mask

Direction = Literal["text_to_image", "image_to_text"]
PatternKind = Literal["dense", "row", "column", "conv"]
PATTERN_KINDS: tuple[str, ...] = get_args(PatternKind)
DIRECTIONS: tuple[str, ...] = get_args(Direction)


@dataclass(frozen=True)
class SparsePattern:
    """Which image pairs a layer admits (see the module docstring).

    Args:
        kind: ``dense``, ``row``, ``column`` or ``conv``.
        context: ``row`` / ``column``: neighbouring rows / columns on each side also admitted.
        kernel_size: ``conv``: the odd side of the window (5 as in lucidrains/DALLE-pytorch).
    """

    kind: PatternKind = "dense"
    context: int = 0
    kernel_size: int = 5

    def __post_init__(self) -> None:
        if self.kind not in PATTERN_KINDS:
            raise ValueError(f"pattern kind must be one of {PATTERN_KINDS}, got {self.kind!r}")
        if self.context < 0:
            raise ValueError(f"context must be >= 0, got {self.context}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}")


@dataclass(frozen=True)
class ImageTextLayout:
    """The sequence one attention call sees: ``text_len`` text tokens and an ``h x w`` image grid.

    Passed in place of a mask (``Block.forward(x, attn_mask)`` hands it on untouched), so every layer
    of a stack builds the blocks its own pattern needs.

    Args:
        text_len: text tokens (padding included).
        grid: ``(h, w)`` of the image codes, in raster order.
        direction: ``text_to_image`` (text = source, image = target) or ``image_to_text``.
        source_first: the sequence is ``[source; target]``, else ``[target; source]``.
        key_mask: ``[B, N]`` bool in sequence order, True = real token (``None``: all real).
    """

    text_len: int
    grid: tuple[int, int]
    direction: Direction = "text_to_image"
    source_first: bool = True
    key_mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.text_len < 0:
            raise ValueError(f"text_len must be >= 0, got {self.text_len}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be (h, w) with h, w >= 1, got {self.grid}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.key_mask is not None and (
            self.key_mask.dtype != torch.bool
            or self.key_mask.dim() != 2
            or self.key_mask.shape[1] != self.length
        ):
            raise ValueError(
                f"key_mask must be a bool tensor [B, {self.length}], "
                f"got {self.key_mask.dtype} {tuple(self.key_mask.shape)}"
            )

    @property
    def image_len(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def length(self) -> int:
        return self.text_len + self.image_len

    @property
    def image_is_target(self) -> bool:
        return self.direction == "text_to_image"

    @property
    def source_len(self) -> int:
        return self.text_len if self.image_is_target else self.image_len

    @property
    def target_len(self) -> int:
        return self.image_len if self.image_is_target else self.text_len

    @property
    def text_start(self) -> int:
        """Position of the first text token."""
        return self.image_len if (self.source_first != self.image_is_target) else 0

    @property
    def image_start(self) -> int:
        """Position of the first image token."""
        return 0 if self.text_start else self.text_len


def image_neighbourhood(
    query_rc: tuple[Tensor, Tensor], key_rc: tuple[Tensor, Tensor], pattern: SparsePattern
) -> Tensor:
    """The pattern on grid coordinates ``(row, column)`` of image queries and keys (broadcasting)."""
    (qr, qc), (kr, kc) = query_rc, key_rc
    if pattern.kind == "row":
        return (qr - kr).abs() <= pattern.context
    if pattern.kind == "column":
        return (qc - kc).abs() <= pattern.context
    if pattern.kind == "conv":
        half = pattern.kernel_size // 2
        return ((qr - kr).abs() <= half) & ((qc - kc).abs() <= half)
    return torch.ones(torch.broadcast_shapes(qr.shape, kr.shape), dtype=torch.bool, device=qr.device)


def allowed_pairs(query: Tensor, key: Tensor, layout: ImageTextLayout, pattern: SparsePattern) -> Tensor:
    """Seq2seq rule AND pattern on sequence positions (broadcasting), without padding.

    Positions must lie in ``[0, layout.length)``; the blocked kernels mask their fill positions
    themselves.
    """
    allowed = seq2seq_allowed(query, key, layout.source_len, layout.target_len, layout.source_first)
    if pattern.kind == "dense":
        return allowed
    w = layout.grid[1]
    q_image, k_image = query - layout.image_start, key - layout.image_start
    both_image = (q_image >= 0) & (q_image < layout.image_len) & (k_image >= 0) & (k_image < layout.image_len)
    near = image_neighbourhood((q_image // w, q_image % w), (k_image // w, k_image % w), pattern)
    return allowed & (~both_image | near)


def pattern_mask(
    kind: PatternKind,
    grid: tuple[int, int],
    text_len: int,
    direction: Direction,
    *,
    source_first: bool = True,
    key_mask: Tensor | None = None,
    context: int = 0,
    kernel_size: int = 5,
) -> Tensor:
    """The full ``[B, 1, N, N]`` mask of a pattern: :func:`seq2seq_mask` AND the image neighbourhood.

    The dense reference attends with this mask; the blocked kernels must give the same outputs.
    ``key_mask`` is ``[B, N]`` in sequence order (True = real).
    """
    pattern = SparsePattern(kind, context, kernel_size)
    layout = ImageTextLayout(text_len, tuple(grid), direction, source_first, key_mask)
    source_mask = target_mask = None
    if key_mask is not None:
        text = key_mask[:, layout.text_start : layout.text_start + text_len]
        image = key_mask[:, layout.image_start : layout.image_start + layout.image_len]
        source_mask, target_mask = (text, image) if layout.image_is_target else (image, text)
    mask = seq2seq_mask(layout.source_len, layout.target_len, source_mask, target_mask, source_first)
    if kind == "dense":
        return mask
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], device=mask.device), torch.arange(grid[1], device=mask.device), indexing="ij"
    )
    rows, cols = rows.flatten(), cols.flatten()
    near = image_neighbourhood((rows[:, None], cols[:, None]), (rows[None, :], cols[None, :]), pattern)
    image = slice(layout.image_start, layout.image_start + layout.image_len)
    mask = mask.clone()
    mask[:, :, image, image] &= near
    return mask


def ernie_vilg_schedule(depth: int, patterns: Sequence[str] | None = None) -> list[str]:
    """Pattern per layer: ERNIE-ViLG's schedule, or ``patterns`` checked against ``depth``.

    The paper's schedule, layer index ``i`` counted from 0: ``column`` where ``i % 4 == 2``, ``row``
    elsewhere, and ``conv`` in the last layer (e.g. depth 4: row, row, column, conv).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if patterns is not None:
        patterns = list(patterns)
        if len(patterns) != depth:
            raise ValueError(f"patterns has {len(patterns)} entries for depth {depth}")
        unknown = [p for p in patterns if p not in PATTERN_KINDS]
        if unknown:
            raise ValueError(f"patterns holds unknown kinds {unknown}; choose from {PATTERN_KINDS}")
        return patterns
    schedule = ["column" if i % 4 == 2 else "row" for i in range(depth)]
    schedule[-1] = "conv"
    return schedule
