"""The contract between visual embedders and the fusion transformers."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, replace

from torch import Tensor, nn


@dataclass
class VisualTokens:
    """A sequence of visual tokens.

    ``embeds`` carry content only; ``pos`` (when not ``None``) is the position encoding the assembly
    adds, once at the input or at every layer. ``mask`` is True for real tokens. ``grid`` is the
    (h, w) token grid before any sampling; ``ids`` are discrete codes for quantised embedders.
    ``num_prefix`` counts the summary tokens (an image [CLS]) ahead of the ones that cover the image.
    """

    embeds: Tensor  # [B, N, D]
    mask: Tensor  # [B, N] bool
    pos: Tensor | None = None  # [B, N, D]
    ids: Tensor | None = None  # [B, N] long
    grid: tuple[int, int] | None = None
    num_prefix: int = 0

    def select(self, index: Tensor) -> VisualTokens:
        """The tokens of images ``index`` (rows of every per-image tensor), e.g. ITM's shown images."""
        return replace(
            self,
            embeds=self.embeds[index],
            mask=self.mask[index],
            pos=None if self.pos is None else self.pos[index],
            ids=None if self.ids is None else self.ids[index],
        )


class VisualEmbedder(nn.Module, metaclass=ABCMeta):
    """Base class: ``forward(pixels[B,3,H,W], pixel_mask[B,H,W] | None) -> VisualTokens``.

    Variable image sizes in one batch arrive padded, with ``pixel_mask`` True on real pixels; an
    embedder masks the tokens that cover only padding and never resizes silently.
    """

    dim: int

    @abstractmethod
    def forward(self, pixels: Tensor, pixel_mask: Tensor | None = None) -> VisualTokens: ...
