"""ERNIE-ViLG's visual embedder: a frozen VQGAN turns pixels into code ids, learned embeddings turn ids into tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlp.models.embedders.base import VisualEmbedder, VisualTokens
from vlp.models.vqgan.model import VQGAN


class VQTokenEmbedder(VisualEmbedder):
    """Pixels → VQGAN code ids ``[B, h*w]`` → code embeddings ``[B, h*w, dim]`` + learned 2-D positions.

    Positions are a row table plus a column table (``grid`` rows and columns), so an image smaller than
    the VQGAN's training resolution uses the top-left part of the grid. With a ``pixel_mask`` (padded
    batches) a code is real when its top-left pixel is; padded images must be padded in whole code cells.

    Args:
        vqgan: the tokenizer. With ``frozen`` it stays in eval mode (no EMA updates, no dropout) and out
            of every optimiser (``requires_grad`` off).
        dim: token width.
        frozen: keep the VQGAN fixed (ERNIE-ViLG); ``False`` lets gradients reach nothing in it anyway
            (ids are discrete) but keeps its parameters trainable for tasks that reconstruct through it.
        checkpoint: a :class:`~vlp.tasks.vqgan.VQGANTask` checkpoint whose VQGAN weights are loaded into
            ``vqgan`` (whose architecture must match; mismatched keys are named).
        init_embeddings_from_codebook: start the code embeddings from the VQGAN's codebook, projected to
            ``dim`` by a fixed random orthogonal map when the widths differ (otherwise N(0, 0.02)).
    """

    def __init__(
        self,
        vqgan: VQGAN,
        dim: int,
        frozen: bool = True,
        checkpoint: str | None = None,
        init_embeddings_from_codebook: bool = False,
    ) -> None:
        super().__init__()
        if checkpoint is not None:
            vqgan.load_vqgan_state(VQGAN.from_checkpoint(checkpoint).state_dict(), checkpoint)
        self.vqgan = vqgan
        self.dim = dim
        self.frozen = frozen
        if frozen:
            vqgan.requires_grad_(False)
            vqgan.eval()
        self.grid = vqgan.grid
        self.code_embed = nn.Embedding(vqgan.num_codes, dim)
        self.row_embed = nn.Parameter(torch.zeros(self.grid[0], dim))
        self.col_embed = nn.Parameter(torch.zeros(self.grid[1], dim))
        nn.init.trunc_normal_(self.code_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.row_embed, std=0.02)
        nn.init.trunc_normal_(self.col_embed, std=0.02)
        if init_embeddings_from_codebook:
            self._init_from_codebook()

    @property
    def num_codes(self) -> int:
        return self.vqgan.num_codes

    @property
    def code_dim(self) -> int:
        return self.vqgan.code_dim

    def train(self, mode: bool = True) -> VQTokenEmbedder:
        super().train(mode)
        if self.frozen:
            self.vqgan.eval()
        return self

    @torch.no_grad()
    def _init_from_codebook(self) -> None:
        codebook = self.vqgan.quantize.embedding.weight.detach().float()
        if codebook.shape[1] != self.dim:
            projection = torch.empty(codebook.shape[1], self.dim)
            nn.init.orthogonal_(projection)
            codebook = codebook @ projection
        scale = 0.02 / codebook.std().clamp(min=1e-8)
        self.code_embed.weight.copy_(codebook * scale)

    def codes(self, pixels: Tensor) -> Tensor:
        """Code ids ``[B, h*w]`` (row-major) of ``pixels [B, 3, H, W]`` in ``[-1, 1]``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            _, ids = self.vqgan.encode(pixels)
        return ids.flatten(1)

    def decode(self, ids: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Pixels from code ids ``[B, h*w]`` (on ``grid``, the VQGAN's by default) or ``[B, h, w]``."""
        if ids.ndim == 2:
            h, w = grid or self.grid
            if ids.shape[1] != h * w:
                raise ValueError(f"VQTokenEmbedder.decode: {ids.shape[1]} ids do not fill a {h}x{w} grid")
            ids = ids.view(ids.shape[0], h, w)
        return self.vqgan.decode_ids(ids)

    def embed_ids(self, ids: Tensor, grid: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """``(embeds, pos)`` ``[B, h*w, dim]`` of row-major code ids on ``grid`` (the VQGAN's by default)."""
        h, w = grid or self.grid
        if h > self.grid[0] or w > self.grid[1]:
            raise ValueError(f"VQTokenEmbedder: a {h}x{w} code grid exceeds the position tables {self.grid}")
        pos = (self.row_embed[:h, None, :] + self.col_embed[None, :w, :]).reshape(h * w, self.dim)
        embeds = self.code_embed(ids)
        return embeds, pos[None].expand(ids.shape[0], -1, -1).to(embeds.dtype)

    def forward(self, pixels: Tensor, pixel_mask: Tensor | None = None) -> VisualTokens:
        ids = self.codes(pixels)
        f = self.vqgan.downsample_factor
        grid = (pixels.shape[-2] // f, pixels.shape[-1] // f)
        embeds, pos = self.embed_ids(ids, grid)
        if pixel_mask is None:
            mask = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        else:
            mask = pixel_mask[:, ::f, ::f][:, : grid[0], : grid[1]].reshape(ids.shape[0], -1)
        return VisualTokens(embeds=embeds, mask=mask, pos=pos, ids=ids, grid=grid, num_prefix=0)
