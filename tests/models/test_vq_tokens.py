"""VQTokenEmbedder: codes from a frozen VQGAN, learned embeddings and positions, decoding, ViLT over codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_vqgan import tiny_vqgan

from conftest import TINY_DIM, TINY_VOCAB
from vlp.batch import Batch
from vlp.models.embedders import VQTokenEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.heads import ITMHead, MLMHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.models.vqgan.model import CONFIG_KEY
from vlp.objectives import ITMObjective, MLMObjective
from vlp.tasks import PretrainTask


def embedder(**kwargs: object) -> VQTokenEmbedder:
    return VQTokenEmbedder(tiny_vqgan(ema=True, dead_code_threshold=0.1), dim=TINY_DIM, **kwargs)


def test_codes_are_the_vqgans_and_decode_inverts_the_lookup() -> None:
    emb = embedder()
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    ids = emb.codes(pixels)
    assert ids.shape == (3, 16) and emb.grid == (4, 4) and emb.num_codes == 32 and emb.code_dim == 8
    torch.testing.assert_close(ids, emb.vqgan.encode(pixels)[1].flatten(1))
    torch.testing.assert_close(emb.decode(ids), emb.vqgan.decode_ids(ids.view(3, 4, 4)))
    tokens = emb(pixels)
    assert tokens.embeds.shape == (3, 16, TINY_DIM) and tokens.pos.shape == (3, 16, TINY_DIM)
    torch.testing.assert_close(tokens.ids, ids)
    torch.testing.assert_close(tokens.embeds, emb.code_embed.weight[ids])
    # row-major positions: token (r, c) carries row r + column c
    torch.testing.assert_close(tokens.pos[0, 1 * 4 + 2], emb.row_embed[1] + emb.col_embed[2])
    assert tokens.mask.all() and tokens.grid == (4, 4) and tokens.num_prefix == 0


def test_frozen_vqgan_stays_in_eval_and_out_of_training() -> None:
    emb = embedder().train()
    assert not emb.vqgan.training and emb.code_embed.training
    assert not any(p.requires_grad for p in emb.vqgan.parameters())
    codebook = emb.vqgan.quantize.embedding.weight.clone()
    emb(torch.rand(4, 3, 16, 16) * 2 - 1)
    torch.testing.assert_close(emb.vqgan.quantize.embedding.weight, codebook)  # no EMA update


def test_padding_masks_the_codes_it_covers() -> None:
    emb = embedder()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.ones(2, 16, 16, dtype=torch.bool)
    mask[1, :, 8:] = False  # second image is 16 x 8, padded on the right
    tokens = emb(pixels, mask)
    assert tokens.mask[0].all()
    assert tokens.mask[1].view(4, 4)[:, :2].all() and not tokens.mask[1].view(4, 4)[:, 2:].any()


def test_bad_ids_and_grids_are_named() -> None:
    emb = embedder()
    with pytest.raises(ValueError, match="15 ids do not fill a 4x4 grid"):
        emb.decode(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the position tables"):
        emb(torch.rand(1, 3, 32, 16))


def test_loads_a_vqgan_task_checkpoint_and_names_a_mismatch(tmp_path: Path) -> None:
    source = tiny_vqgan(ema=True, dead_code_threshold=0.1)
    path = tmp_path / "vqgan.ckpt"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, CONFIG_KEY: source.config},
        path,
    )
    emb = VQTokenEmbedder(tiny_vqgan(ema=True, dead_code_threshold=0.1), dim=TINY_DIM, checkpoint=str(path))
    torch.testing.assert_close(emb.vqgan.quantize.embedding.weight, source.quantize.embedding.weight)
    torch.testing.assert_close(emb.vqgan.decoder.conv_out.weight, source.decoder.conv_out.weight)
    with pytest.raises(KeyError, match=r"quantize\.cluster_size"):
        VQTokenEmbedder(tiny_vqgan(), dim=TINY_DIM, checkpoint=str(path))  # non-EMA VQGAN: extra keys


def test_codebook_initialisation_keeps_code_geometry() -> None:
    emb = embedder(init_embeddings_from_codebook=True)
    codebook = emb.vqgan.quantize.embedding.weight
    # an orthogonal projection times one scale: pairwise distances keep their ratios
    off_diagonal = ~torch.eye(len(codebook), dtype=torch.bool)
    d_code = (codebook[:, None] - codebook[None]).norm(dim=-1)[off_diagonal]
    weight = emb.code_embed.weight
    ratio = (weight[:, None] - weight[None]).norm(dim=-1)[off_diagonal] / d_code
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-3, atol=1e-6)


def test_vilt_over_codes_learns_mlm_and_itm_and_leaves_the_vqgan_alone() -> None:
    torch.manual_seed(0)
    model = ViLT(
        TextEmbedder(vocab_size=TINY_VOCAB, dim=TINY_DIM, max_len=16),
        embedder(),
        TransformerEncoder(dim=TINY_DIM, depth=2, num_heads=4),
    )
    objectives = {
        "mlm": MLMObjective(MLMHead(TINY_DIM, vocab_size=TINY_VOCAB)),
        "itm": ITMObjective(ITMHead(TINY_DIM)),
    }
    task = PretrainTask(model, objectives)
    size = 8
    ids = torch.randint(5, TINY_VOCAB, (size, 8))
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    masked = ids.clone()
    masked[:, 2] = 3
    itm_labels = torch.arange(size) % 2
    batch = Batch(
        keys=[str(i) for i in range(size)],
        pixels=torch.rand(size, 3, 16, 16) * 2 - 1,
        text_ids=ids,
        text_mask=torch.ones(size, 8, dtype=torch.bool),
        mlm_text_ids=masked,
        mlm_labels=labels,
        itm_labels=itm_labels,
        itm_image_index=torch.where(itm_labels == 1, torch.arange(size), (torch.arange(size) + 1) % size),
    )
    vqgan_before = {k: v.clone() for k, v in model.visual_embedder.vqgan.state_dict().items()}
    trainable = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    losses = []
    for step in range(50):
        optimizer.zero_grad()
        loss = task.compute_losses(batch, "train")
        loss.backward()
        if step == 0:
            emb = model.visual_embedder
            assert emb.code_embed.weight.grad.abs().sum() > 0 and emb.row_embed.grad.abs().sum() > 0
            assert all(p.grad is None for p in emb.vqgan.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    for key, value in model.visual_embedder.vqgan.state_dict().items():
        torch.testing.assert_close(value, vqgan_before[key], msg=key)
