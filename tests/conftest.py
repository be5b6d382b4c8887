"""Shared tiny fixtures. Everything is random-initialised and generated here; nothing is downloaded."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from vlp.datamodules.synth.scenes import ShapesConfig
from vlp.datamodules.synth.shapes import write_shapes
from vlp.models.embedders.text import TextEmbedder
from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT

TINY_DIM = 32
TINY_VOCAB = 100


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _torch_threads() -> Iterator[None]:
    """Give every test the process's torch thread count: a test (or a module fixture) that sets one
    thread must not change the reduction order, and so the float results, of the tests after it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few dozen shapes samples (images with captions and QA, pairs with statements), 32 px, 2 shards
    per split."""
    root = tmp_path_factory.mktemp("shapes") / "shapes32"
    config = ShapesConfig(
        resolution=32,
        train_samples=16,
        val_samples=8,
        test_samples=4,
        pair_train_samples=8,
        pair_val_samples=4,
        pair_test_samples=4,
        samples_per_shard=4,
        seed=5,
    )
    write_shapes(root, config)
    return root
