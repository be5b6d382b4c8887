import pytest
import torch

from conftest import TINY_DIM, TINY_VOCAB, make_tiny_vilt
from vlp.models.embedders.text import TextEmbedder
from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT


def test_pad_tokens_and_pad_pixels_leave_real_outputs_unchanged(tiny_vilt: ViLT) -> None:
    ids = torch.randint(5, TINY_VOCAB, (1, 6))
    image = torch.randn(1, 3, 16, 24)
    out = tiny_vilt(ids, torch.ones(1, 6, dtype=torch.bool), image, torch.ones(1, 16, 24, dtype=torch.bool))

    padded_ids = torch.cat([ids, torch.randint(5, TINY_VOCAB, (1, 3))], 1)  # garbage behind the mask
    text_mask = torch.tensor([[1] * 6 + [0] * 3], dtype=torch.bool)
    padded_image = torch.randn(1, 3, 32, 32)  # garbage in the padding, too
    padded_image[..., :16, :24] = image
    pixel_mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    pixel_mask[:, :16, :24] = True
    padded = tiny_vilt(padded_ids, text_mask, padded_image, pixel_mask)

    torch.testing.assert_close(padded.text_states[:, :6], out.text_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.pooled, out.pooled, atol=1e-5, rtol=1e-5)
    real_patches = padded.image_states[0, 1:].reshape(4, 4, TINY_DIM)[:2, :3].reshape(6, TINY_DIM)
    torch.testing.assert_close(real_patches, out.image_states[0, 1:], atol=1e-5, rtol=1e-5)


def test_batching_with_padding_equals_one_by_one(tiny_vilt: ViLT) -> None:
    a_ids, b_ids = torch.randint(5, TINY_VOCAB, (1, 4)), torch.randint(5, TINY_VOCAB, (1, 7))
    a_img, b_img = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 24, 32)
    ids = torch.zeros(2, 7, dtype=torch.long)
    ids[0, :4], ids[1] = a_ids[0], b_ids[0]
    text_mask = ids != 0
    pixels = torch.zeros(2, 3, 24, 32)
    pixels[0, :, :16, :16], pixels[1] = a_img[0], b_img[0]
    pixel_mask = torch.zeros(2, 24, 32, dtype=torch.bool)
    pixel_mask[0, :16, :16], pixel_mask[1] = True, True
    batched = tiny_vilt(ids, text_mask, pixels, pixel_mask)
    single_a = tiny_vilt(a_ids, torch.ones(1, 4, dtype=torch.bool), a_img)
    single_b = tiny_vilt(b_ids, torch.ones(1, 7, dtype=torch.bool), b_img)
    torch.testing.assert_close(batched.pooled[0], single_a.pooled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.pooled[1], single_b.pooled[0], atol=1e-5, rtol=1e-5)


def test_image_changes_the_pooled_output(tiny_vilt: ViLT) -> None:
    ids = torch.randint(5, TINY_VOCAB, (1, 5))
    mask = torch.ones(1, 5, dtype=torch.bool)
    one = tiny_vilt(ids, mask, torch.randn(1, 3, 16, 16)).pooled
    other = tiny_vilt(ids, mask, torch.randn(1, 3, 16, 16)).pooled
    assert not torch.allclose(one, other)


def test_precomputed_visual_tokens_equal_embedding_the_pixels(tiny_vilt: ViLT) -> None:
    ids = torch.randint(5, TINY_VOCAB, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.bool)
    pixels = torch.randn(3, 3, 16, 16)
    visual = tiny_vilt.embed_images(pixels)
    torch.testing.assert_close(
        tiny_vilt(ids, mask, None, visual=visual).pooled, tiny_vilt(ids, mask, pixels).pooled
    )
    shown = torch.tensor([2, 0, 0])  # the rows ITM shows, picked from the tokens instead of the pixels
    torch.testing.assert_close(
        tiny_vilt(ids, mask, None, visual=visual.select(shown)).pooled,
        tiny_vilt(ids, mask, pixels[shown]).pooled,
    )
    with pytest.raises(ValueError, match="pixels or visual"):
        tiny_vilt(ids, mask, None)


def test_parts_of_different_width_are_refused() -> None:
    with pytest.raises(ValueError, match="visual_embedder"):
        ViLT(TextEmbedder(dim=32), ViTPatchEmbedder(dim=16), TransformerEncoder(dim=32, depth=1, num_heads=4))


def test_tiny_vilt_fixture_builds() -> None:
    assert make_tiny_vilt().dim == TINY_DIM


def test_text_rows_compute_only_the_rows_read(tiny_vilt: ViLT) -> None:
    """With ``text_rows`` the asked rows and the pooled [CLS] equal the full pass; the rest are NaN."""
    tiny_vilt.eval()
    ids = torch.randint(5, TINY_VOCAB, (2, 6))
    text_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    image = torch.randn(2, 3, 32, 32)
    rows = torch.tensor([[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    full = tiny_vilt(ids, text_mask, image)
    part = tiny_vilt(ids, text_mask, image, text_rows=rows)
    torch.testing.assert_close(part.text_states[rows], full.text_states[rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part.pooled, full.pooled, atol=1e-5, rtol=1e-5)
    not_read = ~rows
    not_read[:, 0] = False  # [CLS] is computed for the pooler
    assert part.text_states[not_read].isnan().all() and part.image_states.isnan().all()
    with pytest.raises(ValueError, match="text_rows"):
        tiny_vilt(ids, text_mask, image, text_rows=rows[0])
