"""Shared tiny fixtures. Everything is random-initialised and generated here; nothing is downloaded."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.text import TextEmbedder
from vlp.models.transformer import TransformerEncoder
from vlp.models.vilt import ViLT

TINY_DIM = 32
TINY_VOCAB = 100


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def make_tiny_vilt(
    dim: int = TINY_DIM, patch_size: int = 8, pos_grid: int = 4, max_image_len: int = -1
) -> ViLT:
    return ViLT(
        TextEmbedder(vocab_size=TINY_VOCAB, dim=dim, max_len=16),
        ViTPatchEmbedder(dim=dim, patch_size=patch_size, pos_grid=pos_grid, max_image_len=max_image_len),
        TransformerEncoder(dim=dim, depth=2, num_heads=4),
    )


@pytest.fixture
def tiny_vilt() -> ViLT:
    return make_tiny_vilt().eval()
