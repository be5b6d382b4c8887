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


@pytest.mark.parametrize("size", [(16, 12), (18, 13)])  # whole patches; a remainder the convolution drops
def test_projection_is_the_convolution_of_its_weights(size: tuple[int, int]) -> None:
    """The patch tokens and the weight gradients equal ``patch_embed.proj``'s convolution's. Tolerances:
    the matmul and the convolution sum the 48 products of a patch in different orders (fp32)."""
    torch.manual_seed(0)
    emb = ViTPatchEmbedder(dim=8, patch_size=4, pos_grid=3)
    pixels = torch.randn(2, 3, *size)
    tokens, h, w = emb.project(pixels)
    conv = emb.patch_embed.proj(pixels)
    assert (h, w) == conv.shape[-2:] == (size[0] // 4, size[1] // 4)
    torch.testing.assert_close(tokens, conv.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(
        tokens.square().sum(), [emb.patch_embed.proj.weight, emb.patch_embed.proj.bias]
    )
    expected = torch.autograd.grad(
        conv.square().sum(), [emb.patch_embed.proj.weight, emb.patch_embed.proj.bias]
    )
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


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


def test_pre_norm_normalises_patch_plus_position_and_folds_the_positions_in() -> None:
    """With ``pre_norm`` each token is LayerNorm(patch + position): zero mean, unit variance over the
    features, the positions no longer returned apart; without it, nothing is normalised."""
    torch.manual_seed(0)
    plain = ViTPatchEmbedder(dim=16, patch_size=4, pos_grid=3).eval()
    normed = ViTPatchEmbedder(dim=16, patch_size=4, pos_grid=3, pre_norm=True).eval()
    normed.load_state_dict(
        plain.state_dict() | {k: v for k, v in normed.state_dict().items() if "norm_pre" in k}
    )
    pixels = torch.randn(2, 3, 12, 12) * 3
    raw, out = plain(pixels), normed(pixels)
    assert out.pos is None and raw.pos is not None
    torch.testing.assert_close(out.embeds, F.layer_norm(raw.embeds + raw.pos, (16,), eps=1e-6))
    torch.testing.assert_close(out.embeds.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)
    assert not torch.allclose(raw.embeds.mean(-1), torch.zeros(2, 10), atol=1e-2)
    assert set(normed.state_dict()) - set(plain.state_dict()) == {"norm_pre.weight", "norm_pre.bias"}


def test_pre_norm_keeps_padding_invariance_in_vilt() -> None:
    from vlp.models.embedders.text import TextEmbedder
    from vlp.models.layers.transformer import TransformerEncoder
    from vlp.models.vilt import ViLT

    torch.manual_seed(0)
    model = ViLT(
        TextEmbedder(50, 16, 12), ViTPatchEmbedder(16, 4, 3, pre_norm=True), TransformerEncoder(16, 2, 2)
    ).eval()
    ids = torch.randint(5, 50, (1, 5))
    image = torch.randn(1, 3, 8, 12)
    out = model(ids, torch.ones(1, 5, dtype=torch.bool), image, torch.ones(1, 8, 12, dtype=torch.bool))
    padded_pixels = torch.randn(1, 3, 16, 16)  # garbage in the padding
    padded_pixels[..., :8, :12] = image
    pixel_mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    pixel_mask[:, :8, :12] = True
    padded = model(ids, torch.ones(1, 5, dtype=torch.bool), padded_pixels, pixel_mask)
    torch.testing.assert_close(padded.pooled, out.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.text_states, out.text_states, atol=1e-5, rtol=1e-5)
