"""The single-stream fusion both ViLT and E2E-VLP's encoder side are: ``[text; image]`` through one encoder."""

from __future__ import annotations

from torch import Tensor, nn

from vlp.models.embedders.base import VisualEmbedder, VisualTokens
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.heads import Pooler
from vlp.models.layers.transformer import TransformerEncoder


def common_width(assembly: str, parts: dict[str, nn.Module | None]) -> int:
    """The width (``dim``) every part of an assembly shares; a clear error naming each part's otherwise.
    ``None`` parts (an optional decoder left out) are skipped."""
    widths = {name: int(part.dim) for name, part in parts.items() if part is not None}
    if len(set(widths.values())) != 1:
        raise ValueError(f"{assembly} parts disagree on the model width: {widths}")
    return next(iter(widths.values()))


class SingleStreamFusion(nn.Module):
    """The parts of a single-stream assembly: text and visual embedders, a modality-type table (0 text,
    1 image, more for extra images), the encoder and a pooler over the first token.

    Args:
        assembly: the subclass's name, for the width error.
        extra_parts: further parts that must share the width (E2E-VLP's decoder).
    """

    def __init__(
        self,
        assembly: str,
        text_embedder: TextEmbedder,
        visual_embedder: VisualEmbedder,
        encoder: TransformerEncoder,
        pooler: Pooler | None,
        num_modality_types: int,
        extra_parts: dict[str, nn.Module | None] | None = None,
    ) -> None:
        super().__init__()
        parts = {"text_embedder": text_embedder, "visual_embedder": visual_embedder, "encoder": encoder}
        self.dim = common_width(assembly, parts | (extra_parts or {}))
        self.text_embedder = text_embedder
        self.visual_embedder = visual_embedder
        self.token_type_embeddings = nn.Embedding(num_modality_types, self.dim)
        nn.init.trunc_normal_(self.token_type_embeddings.weight, std=0.02)
        self.encoder = encoder
        self.pooler = pooler if pooler is not None else Pooler(self.dim)

    def embed_images(self, pixels: Tensor, pixel_mask: Tensor | None = None) -> VisualTokens:
        """The visual tokens of ``pixels``, to pass as ``visual`` to several fusion passes (pre-training's
        views, E2E-VLP's encoder and decoder passes embed each image once)."""
        return self.visual_embedder(pixels, pixel_mask)

    def embed_text(self, text_ids: Tensor) -> Tensor:
        """Text tokens with the text modality type."""
        return self.text_embedder(text_ids) + self.token_type_embeddings.weight[0]
