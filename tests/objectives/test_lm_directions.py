"""ERNIE-ViLG objectives: both LM directions learn a fixed batch; the end-to-end loss reaches what it must."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from vlp.batch import Batch
from vlp.models.ernie_vilg.model import ERNIEViLG
from vlp.objectives.lm_directions import ImageToTextLM, TextToImageLM
from vlp.objectives.reconstruction import ReconstructionObjective, bridge_latents

VOCAB, CODES, GRID, CODE_DIM = 20, 8, (2, 2), 4


def tiny(seed: int = 0) -> ERNIEViLG:
    torch.manual_seed(seed)
    return ERNIEViLG(
        vocab_size=VOCAB, num_codes=CODES, grid=GRID, dim=32, depth=2, num_heads=4, max_text_len=8,
        patterns=["row", "conv"], kernel_size=3, code_dim=CODE_DIM,
    )  # fmt: skip


def fixed_batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    captions = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 8, 9, 2], [1, 10, 2, 0, 0], [1, 11, 12, 2, 0]])
    return Batch(
        keys=list("abcd"),
        pixels=torch.rand(4, 3, 8, 8, generator=g) * 2 - 1,
        caption_ids=captions,
        caption_mask=captions != 0,
        image_codes=torch.randint(0, CODES, (4, 4), generator=g),
    )


def test_both_directions_learn_a_fixed_batch_in_one_step() -> None:
    model, batch = tiny(), fixed_batch()
    t2i, i2t = TextToImageLM(), ImageToTextLM(label_smoothing=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        out_t2i = model(batch.caption_ids, batch.caption_mask, batch.image_codes, "text_to_image")
        out_i2t = model(batch.caption_ids, batch.caption_mask, batch.image_codes, "image_to_text")
        losses = t2i(out_t2i, batch), i2t(out_i2t, batch)
        if first is None:
            first = [loss.logs for loss in losses]
        optimizer.zero_grad()
        (losses[0].loss + losses[1].loss).backward()
        optimizer.step()
    assert losses[0].logs["t2i_nll"] < 0.3 * first[0]["t2i_nll"]
    assert losses[1].logs["i2t_nll"] < 0.3 * first[1]["i2t_nll"]
    assert losses[0].logs["t2i_acc"] == 1.0 and losses[1].logs["i2t_acc"] == 1.0


def test_image_to_text_loss_counts_real_targets_only() -> None:
    model, batch = tiny(), fixed_batch()
    out = model(batch.caption_ids, batch.caption_mask, batch.image_codes, "image_to_text")
    loss = ImageToTextLM()(out, batch).loss
    logits = model.text_logits(out.text_states[:, :-1])
    per_token = nn.functional.cross_entropy(
        logits.transpose(1, 2), batch.caption_ids[:, 1:], reduction="none"
    )
    expected = per_token[batch.caption_mask[:, 1:]].mean()
    torch.testing.assert_close(loss, expected)


def test_objectives_refuse_the_wrong_direction_and_missing_fields() -> None:
    model, batch = tiny(), fixed_batch()
    out = model(batch.caption_ids, batch.caption_mask, batch.image_codes, "image_to_text")
    with pytest.raises(ValueError, match="text_to_image"):
        TextToImageLM()(out, batch)
    t2i = model(batch.caption_ids, batch.caption_mask, batch.image_codes, "text_to_image")
    with pytest.raises(ValueError, match=r"batch\.image_codes"):
        TextToImageLM()(t2i, replace(batch, image_codes=None))
    with pytest.raises(ValueError, match="decode_latents"):
        ReconstructionObjective()(t2i, batch)


def decoder() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.ConvTranspose2d(CODE_DIM, 8, 2, 2), nn.GELU(), nn.ConvTranspose2d(8, 3, 2, 2))


@pytest.mark.parametrize("bridge", ["straight_through", "soft", "direct"])
@pytest.mark.parametrize("train_decoder", [True, False])
def test_reconstruction_gradient_reaches_the_transformer_and_a_trainable_decoder(
    bridge: str, train_decoder: bool
) -> None:
    model, batch, dec = tiny(), fixed_batch(), decoder()
    dec.requires_grad_(train_decoder)
    codebook = torch.randn(CODES, CODE_DIM)
    out = model(batch.caption_ids, batch.caption_mask, batch.image_codes, "text_to_image")
    out = replace(out, decode_latents=dec, codebook=codebook)
    result = ReconstructionObjective(loss="l2", bridge=bridge)(out, batch)
    result.loss.backward()
    for name in (
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.blocks.1.mlp.fc1.weight",
        "to_codebook.0.weight",
        "embeddings.code_embeddings.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.head.weight.grad is None  # the reconstruction path does not use the LM head
    decoder_grad = dec[0].weight.grad
    assert (decoder_grad is not None and decoder_grad.abs().sum() > 0) == train_decoder
    assert ("recon_commitment" in result.logs) == (bridge == "straight_through")


def test_straight_through_feeds_code_vectors_and_soft_approaches_it() -> None:
    codebook = torch.randn(CODES, CODE_DIM)
    z = torch.randn(2, CODE_DIM, *GRID, requires_grad=True)
    hard, commitment = bridge_latents(z, codebook, "straight_through")
    rows = hard.permute(0, 2, 3, 1).reshape(-1, CODE_DIM)
    nearest = torch.cdist(z.detach().permute(0, 2, 3, 1).reshape(-1, CODE_DIM), codebook).argmin(1)
    torch.testing.assert_close(rows, codebook[nearest])
    hard.sum().backward()  # identity gradient to z
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    soft, _ = bridge_latents(z.detach(), codebook, "soft", temperature=1e-4)
    torch.testing.assert_close(soft, hard.detach(), rtol=1e-4, atol=1e-4)
    assert commitment is not None and commitment > 0


def test_reconstruction_loss_falls_through_a_frozen_decoder() -> None:
    model, batch, dec = tiny(), fixed_batch(), decoder()
    dec.requires_grad_(False)
    with torch.no_grad():  # images the frozen decoder can produce exactly
        batch = replace(
            batch, pixels=dec(torch.randn(4, CODE_DIM, *GRID, generator=torch.Generator().manual_seed(2)))
        )
    objective = ReconstructionObjective(loss="l1", bridge="direct")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = model(batch.caption_ids, batch.caption_mask, batch.image_codes, "text_to_image")
        loss = objective(replace(out, decode_latents=dec, codebook=None), batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
