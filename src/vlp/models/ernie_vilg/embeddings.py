"""ERNIE-ViLG's input embeddings: text tokens and image-code slots of either direction.

A token is the sum of its content (a word, or a VQGAN code / the BOI token), its position (a text
position, or the row and column of the cell an image slot stands for), its modality and the direction
of the sequence it is in. There is no LayerNorm: the pre-LN encoder normalises each block's input.

The shared :class:`~vlp.models.embedders.text.TextEmbedder` (BERT's, with its LayerNorm and segment table)
and :class:`~vlp.models.embedders.vq_tokens.VQTokenEmbedder` (pixels to codes) do not fit here: the text
and code tables must carry the direction embedding, and a text-to-image sequence's image slots hold codes
shifted by one (``[BOI, c_0, ..]``) at the positions of the cells they predict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlp.models.ernie_vilg.sparse_patterns import DIRECTIONS, Direction

TEXT, IMAGE = 0, 1


class ERNIEViLGEmbeddings(nn.Module):
    """Word, text-position, code (+ BOI), row, column, modality and direction tables (N(0, 0.02)).

    Args:
        vocab_size, num_codes, grid, dim, max_text_len, pad_id: as :class:`~vlp.models.ernie_vilg.ERNIEViLG`.
    """

    def __init__(
        self, vocab_size: int, num_codes: int, grid: tuple[int, int], dim: int, max_text_len: int, pad_id: int
    ) -> None:
        super().__init__()
        self.grid = grid
        self.max_text_len = max_text_len
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.text_positions = nn.Embedding(max_text_len, dim)
        self.code_embeddings = nn.Embedding(num_codes + 1, dim)
        self.row_positions = nn.Embedding(grid[0], dim)
        self.column_positions = nn.Embedding(grid[1], dim)
        self.modality_embeddings = nn.Embedding(2, dim)
        self.direction_embeddings = nn.Embedding(len(DIRECTIONS), dim)
        for table in self.children():
            nn.init.trunc_normal_(table.weight, std=0.02)
        with torch.no_grad():
            self.word_embeddings.weight[pad_id].zero_()

    def text(self, ids: Tensor, direction: Direction, start: int = 0) -> Tensor:
        """Text tokens at text positions ``start ..``: word + position + modality + direction."""
        if start + ids.shape[1] > self.max_text_len:
            raise ValueError(
                f"text of {start + ids.shape[1]} tokens is longer than ERNIEViLG.max_text_len={self.max_text_len}"
            )
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        return (
            self.word_embeddings(ids)
            + self.text_positions(positions)[None]
            + self.modality_embeddings.weight[TEXT]
            + self.direction_embeddings.weight[DIRECTIONS.index(direction)]
        )

    def codes(self, ids: Tensor, direction: Direction, start: int = 0) -> Tensor:
        """Image slots ``start ..`` holding code ids ``ids`` (the BOI id included): code + row + column
        + modality + direction embeddings."""
        slots = torch.arange(start, start + ids.shape[1], device=ids.device)
        if start + ids.shape[1] > self.grid[0] * self.grid[1]:
            raise ValueError(f"image slots up to {start + ids.shape[1]} exceed the {self.grid} grid")
        w = self.grid[1]
        return (
            self.code_embeddings(ids)
            + self.row_positions(slots // w)[None]
            + self.column_positions(slots % w)[None]
            + self.modality_embeddings.weight[IMAGE]
            + self.direction_embeddings.weight[DIRECTIONS.index(direction)]
        )
