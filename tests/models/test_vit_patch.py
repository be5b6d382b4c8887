import pytest
import torch
import torch.nn.functional as F

from vlp.models.embedders.vit_patch import ViTPatchEmbedder


def test_positions_equal_official_per_image_interpolation() -> None:
    """Each image's positions are the table interpolated to *its own* grid (ViLT, align_corners=True)."""
    emb = ViTPatchEmbedder(dim=8, patch_size=4, pos_grid=3).eval()
    pixels = torch.randn(2, 3, 20, 16)
    pixel_mask = torch.zeros(2, 20, 16, dtype=torch.bool)
    pixel_mask[0, :20, :16] = True  # 5 x 4 patches
    pixel_mask[1, :8, :12] = True  # 2 x 3 patches
    tokens = emb(pixels, pixel_mask)
    table = emb.pos_embed[0, 1:].T.reshape(1, 8, 3, 3)
    for i, (h, w) in enumerate([(5, 4), (2, 3)]):
        expected = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=True)[0]
        got = tokens.pos[i, 1:].T.reshape(8, 5, 4)[:, :h, :w]
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert tokens.mask[1, 1:].reshape(5, 4)[:2, :3].all()
    assert tokens.mask[1, 1:].sum() == 6


def test_padding_pixels_do_not_change_real_tokens() -> None:
    emb = ViTPatchEmbedder(dim=8, patch_size=4, pos_grid=3).eval()
    image = torch.randn(1, 3, 8, 12)
    plain = emb(image, torch.ones(1, 8, 12, dtype=torch.bool))
    padded_pixels = torch.zeros(1, 3, 16, 16)
    padded_pixels[..., :8, :12] = image
    padded_mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    padded_mask[:, :8, :12] = True
    padded = emb(padded_pixels, padded_mask)
    grid = padded.embeds[0, 1:].reshape(4, 4, 8)[:2, :3].reshape(6, 8)
    torch.testing.assert_close(grid, plain.embeds[0, 1:])
    torch.testing.assert_close(padded.pos[0, 1:].reshape(4, 4, 8)[:2, :3].reshape(6, 8), plain.pos[0, 1:])


def test_patch_sampling_keeps_only_real_patches_when_enough() -> None:
    emb = ViTPatchEmbedder(dim=8, patch_size=4, pos_grid=4, max_image_len=5).train()
    pixel_mask = torch.zeros(3, 16, 16, dtype=torch.bool)
    pixel_mask[:, :8, :12] = True  # 6 real patches out of 16
    tokens = emb(torch.randn(3, 3, 16, 16), pixel_mask)
    assert tokens.embeds.shape == (3, 6, 8)  # [CLS] + 5 sampled
    assert tokens.mask.all()
    emb.eval()
    assert emb(torch.randn(3, 3, 16, 16), pixel_mask).embeds.shape == (3, 17, 8)


def test_load_vit_embedding_resamples_positions_and_names_missing_keys() -> None:
    emb = ViTPatchEmbedder(dim=8, patch_size=4, pos_grid=2)
    source = {
        "patch_embed.proj.weight": torch.randn(8, 3, 4, 4),
        "patch_embed.proj.bias": torch.randn(8),
        "cls_token": torch.randn(1, 1, 8),
        "pos_embed": torch.randn(1, 1 + 16, 8),
    }
    emb.load_vit_embedding(source)
    torch.testing.assert_close(emb.patch_embed.proj.weight, source["patch_embed.proj.weight"])
    assert emb.pos_embed.shape == (1, 5, 8)
    del source["cls_token"]
    with pytest.raises(KeyError, match="cls_token"):
        emb.load_vit_embedding(source)
