"""BERT-style text embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TextEmbedder(nn.Module):
    """Word + learned position (+ segment) embeddings, LayerNorm, dropout — BERT's embedding layer.

    The segment table exists so BERT/ViLT checkpoints map key by key; vlp always uses segment 0 and
    marks modality with the assembly's own modality-type embedding instead.
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        dim: int = 768,
        max_len: int = 40,
        type_vocab_size: int = 2,
        pad_id: int = 0,
        dropout: float = 0.0,
        norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.max_len = max_len
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        for table in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings):
            nn.init.trunc_normal_(table.weight, std=0.02)
        with torch.no_grad():
            self.word_embeddings.weight[pad_id].zero_()

    def forward(self, ids: Tensor) -> Tensor:
        length = ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"text of {length} tokens is longer than TextEmbedder.max_len={self.max_len}")
        positions = torch.arange(length, device=ids.device)
        x = (
            self.word_embeddings(ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        return self.dropout(self.norm(x))
