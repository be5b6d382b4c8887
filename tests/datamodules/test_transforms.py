from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image

from vlp.datamodules.transforms import (
    COLOUR_CHANGING_OPS,
    RANDAUGMENT_OPS,
    ViltTransform,
    long_side_cap,
    resized_shape,
)


def test_landscape_640x480_at_384_patch_32() -> None:
    # shorter side 480 -> 384 (scale 0.8), longer 640 -> 512, both already multiples of 32
    assert resized_shape(480, 640, image_size=384, patch_size=32) == (384, 512)


def test_portrait_is_the_transpose() -> None:
    assert resized_shape(640, 480, image_size=384, patch_size=32) == (512, 384)


def test_long_side_is_capped() -> None:
    # 400x1600: shorter side to 384 would make the longer 1536 > cap int(384 * 1333 / 800) = 639,
    # so the longer side becomes 639 and the shorter 384 * 639 / 1536 = 159.75 -> 160; floored to 32s.
    assert long_side_cap(384) == 639
    assert resized_shape(400, 1600, image_size=384, patch_size=32) == (160, 608)


@pytest.mark.parametrize("size", [(480, 640), (333, 777), (1000, 1001), (50, 3000), (31, 17), (384, 384)])
@pytest.mark.parametrize(("image_size", "patch_size"), [(384, 32), (64, 16), (32, 16)])
def test_sides_are_patch_multiples_within_bounds(
    size: tuple[int, int], image_size: int, patch_size: int
) -> None:
    height, width = resized_shape(*size, image_size=image_size, patch_size=patch_size)
    assert height % patch_size == 0 and width % patch_size == 0
    assert patch_size <= min(height, width) <= image_size
    assert max(height, width) <= long_side_cap(image_size)


def test_transform_resizes_without_crop_and_normalises() -> None:
    transform = ViltTransform(image_size=384, patch_size=32)
    white = transform(Image.new("RGB", (640, 480), (255, 255, 255)))
    black = transform(Image.new("RGB", (640, 480), (0, 0, 0)))
    assert white.shape == (3, 384, 512) and white.dtype == torch.float32
    torch.testing.assert_close(white, torch.ones_like(white))  # (1 - 0.5) / 0.5
    torch.testing.assert_close(black, -torch.ones_like(black))


def test_transform_keeps_the_whole_scene() -> None:
    # left half red, right half blue: after resizing (no crop) both halves are still there
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))
    pixels = ViltTransform(image_size=32, patch_size=16)(image)
    # 32 x 64 -> 32 x 128 exceeds the cap 53 -> 26.5 x 53 -> rounded 27 x 53 -> floored to 16s: 16 x 48
    assert pixels.shape == (3, 16, 48)
    assert pixels[0, :, :8].mean() > 0.9 and pixels[2, :, :8].mean() < -0.9
    assert pixels[2, :, -8:].mean() > 0.9 and pixels[0, :, -8:].mean() < -0.9


def test_grayscale_input_becomes_three_channels() -> None:
    pixels = ViltTransform(image_size=32, patch_size=16)(Image.new("L", (32, 32), 128))
    assert pixels.shape == (3, 32, 32)


def test_randaugment_is_vilts_without_invert() -> None:
    transform = ViltTransform(image_size=32, patch_size=16, randaugment=True)
    assert transform.randaugment is not None
    names = [op.name for op in transform.randaugment.ops]
    assert "Invert" not in names and "Cutout" not in names
    assert names == list(RANDAUGMENT_OPS)
    assert transform.randaugment.num_layers == 2
    assert all(op.prob == 1.0 and op.magnitude == pytest.approx(3.0) for op in transform.randaugment.ops)
    assert set(names) >= COLOUR_CHANGING_OPS


def test_randaugment_output_has_the_resized_shape() -> None:
    transform = ViltTransform(image_size=32, patch_size=16, randaugment=True)
    image = Image.new("RGB", (48, 32), (10, 200, 30))
    for _ in range(8):
        assert transform(image).shape == (3, 32, 48)


def test_transform_pickles() -> None:
    transform = ViltTransform(image_size=32, patch_size=16, randaugment=True)
    copy = pickle.loads(pickle.dumps(transform))
    assert copy(Image.new("RGB", (32, 32))).shape == (3, 32, 32)


def test_image_smaller_than_a_patch_is_rejected() -> None:
    with pytest.raises(ValueError, match="smaller than one patch"):
        ViltTransform(image_size=8, patch_size=16)
