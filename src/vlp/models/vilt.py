"""The ViLT assembly: text and visual tokens concatenated into one single-stream encoder."""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.models.embedders.base import VisualEmbedder, VisualTokens
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.fusion import SingleStreamFusion
from vlp.models.layers.heads import Pooler
from vlp.models.layers.transformer import TransformerEncoder, key_padding_mask, row_index
from vlp.models.outputs import FusionOutput


class ViLT(SingleStreamFusion):
    """``[text; image]`` + modality-type embeddings → pre-LN encoder → pooled [CLS].

    Any :class:`VisualEmbedder` plugs in: patches give ViLT, CNN grids give Pixel-BERT, VQ codes give
    a code-token ViLT. Visual positions (when the embedder gives them) are added once at the input.

    Args:
        num_modality_types: 2 for text/image; NLVR2 grows it to 3 so the second image has its own type.
    """

    def __init__(
        self,
        text_embedder: TextEmbedder,
        visual_embedder: VisualEmbedder,
        encoder: TransformerEncoder,
        pooler: Pooler | None = None,
        num_modality_types: int = 2,
    ) -> None:
        super().__init__("ViLT", text_embedder, visual_embedder, encoder, pooler, num_modality_types)

    def forward(
        self,
        text_ids: Tensor,
        text_mask: Tensor,
        pixels: Tensor | None,
        pixel_mask: Tensor | None = None,
        image_token_type: int = 1,
        text_rows: Tensor | None = None,
        visual: VisualTokens | None = None,
    ) -> FusionOutput:
        """Fuse ``[text; image]``; ``visual``: the images' tokens from :meth:`embed_images`, used
        instead of embedding ``pixels``.

        ``text_rows`` (``[B, L]`` bool) says which text rows of the output the caller will read (MLM:
        the masked positions). Then the last layer computes only those rows and ``[CLS]`` (the pooler's),
        and every other row of ``text_states`` and ``image_states`` is NaN, so that reading one fails
        loudly instead of silently using a stale state.
        """
        text = self.embed_text(text_ids)
        if visual is None:
            if pixels is None:
                raise ValueError("ViLT needs pixels or visual (tokens from embed_images)")
            visual = self.visual_embedder(pixels, pixel_mask)
        image = visual.embeds if visual.pos is None else visual.embeds + visual.pos
        image = image + self.token_type_embeddings.weight[image_token_type]
        mask = torch.cat([text_mask.bool(), visual.mask], dim=1)
        tokens = torch.cat([text, image.to(text.dtype)], dim=1)
        length = text_ids.shape[1]
        if text_rows is None:
            states = self.encoder(tokens, key_padding_mask(mask))
            text_states, image_states = states[:, :length], states[:, length:]
        else:
            text_states, image_states = self.fuse_rows(tokens, mask, text_rows)
        return FusionOutput(
            text_states=text_states,
            image_states=image_states,
            text_mask=mask[:, :length],
            image_mask=mask[:, length:],
            pooled=self.pooler(text_states),
            visual=visual,
        )

    def fuse_rows(self, tokens: Tensor, mask: Tensor, text_rows: Tensor) -> tuple[Tensor, Tensor]:
        """(text states, image states): the encoder's output at ``[CLS]`` and ``text_rows``, NaN
        elsewhere (see :meth:`forward`); the image states are one NaN broadcast, not a filled tensor."""
        batch, length, dim = tokens.shape
        text_length = text_rows.shape[-1]
        if text_rows.dim() != 2 or text_rows.shape[0] != batch or text_length > length:
            raise ValueError(f"text_rows must be [B, L] for the batch's text, got {tuple(text_rows.shape)}")
        wanted = text_rows.bool().clone()
        wanted[:, 0] = True  # [CLS], read by the pooler
        index, valid = row_index(wanted)
        packed = self.encoder(tokens, key_padding_mask(mask), rows=index)
        samples = torch.arange(batch, device=tokens.device)[:, None].expand_as(index)
        text = packed.new_full((batch, text_length, dim), float("nan"))
        text = text.index_put((samples[valid], index[valid]), packed[valid])
        image = packed.new_full((), float("nan")).expand(batch, length - text_length, dim)
        return text, image
