"""Recipes build what they say: the paper-size ViLT-B/32 layered over the default recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlp.cli import VLPCLI

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.filterwarnings("ignore")
def test_vilt_b32_has_the_paper_sizes() -> None:
    cli = VLPCLI(
        args=[
            "--config",
            str(CONFIGS / "vilt/shapes_pretrain.yaml"),
            "--config",
            str(CONFIGS / "vilt/vilt_b32.yaml"),
        ],
        run=False,
    )
    model = cli.model.model
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    # 12 blocks x (4 x 768^2 attention + 2 x 768 x 3072 MLP + biases and norms) + final norm.
    assert encoder_params == 12 * (4 * 768 * 768 + 2 * 768 * 3072 + 4 * 768 + 3072 + 4 * 768 + 768) + 2 * 768
    assert len(model.encoder.blocks) == 12 and model.encoder.blocks[0].attn.num_heads == 12
    assert model.visual_embedder.patch_size == 32 and model.visual_embedder.max_image_len == 200
    assert cli.datamodule.patch_size == 32 and cli.datamodule.image_size == 384
    assert cli.model.hparams.lr == 1e-4
