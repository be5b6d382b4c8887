from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from vlp.datamodules.normalise import normalise_pixels
from vlp.datamodules.transforms import (
    COLOUR_CHANGING_OPS,
    RANDAUGMENT_OPS,
    VILT_MEAN,
    VILT_STD,
    ViltTransform,
    long_side_cap,
    resized_shape,
    shorter_side_shape,
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


def test_transform_resizes_without_crop_and_normalisation_maps_to_plus_minus_one() -> None:
    transform = ViltTransform(image_size=384, patch_size=32)
    white = transform(Image.new("RGB", (640, 480), (255, 255, 255)))
    black = transform(Image.new("RGB", (640, 480), (0, 0, 0)))
    assert white.shape == (3, 384, 512) and white.dtype == torch.uint8
    assert (white == 255).all() and (black == 0).all()
    # (1 - 0.5) / 0.5 and (0 - 0.5) / 0.5
    assert (normalised(white) == 1.0).all() and (normalised(black) == -1.0).all()


def test_transform_keeps_the_whole_scene() -> None:
    # left half red, right half blue: after resizing (no crop) both halves are still there
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))
    pixels = ViltTransform(image_size=32, patch_size=16)(image).float()
    # 32 x 64 -> 32 x 128 exceeds the cap 53 -> 26.5 x 53 -> rounded 27 x 53 -> floored to 16s: 16 x 48
    assert pixels.shape == (3, 16, 48)
    assert pixels[0, :, :8].mean() > 240 and pixels[2, :, :8].mean() < 15
    assert pixels[2, :, -8:].mean() > 240 and pixels[0, :, -8:].mean() < 15


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


def reference_transform(
    image: Image.Image, image_size: int, patch_size: int, center_crop: bool = False
) -> torch.Tensor:
    """ViLT's transform written plainly on PIL: resize (PIL's antialiased bicubic), crop, float, normalise."""
    image = image.convert("RGB")
    if center_crop:
        size = shorter_side_shape(image.height, image.width, image_size)
    else:
        size = resized_shape(image.height, image.width, image_size, patch_size)
    image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    if center_crop:
        image = F.center_crop(image, [image_size, image_size])
    pixels = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
    return F.normalize(pixels, mean=list(VILT_MEAN), std=list(VILT_STD))


def photo_like(rng: np.random.Generator, height: int, width: int, mode: str = "RGB") -> Image.Image:
    """A smooth random colour field with noise, as photographs have both."""
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noisy = np.clip(smooth.astype(np.int16) + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy).convert(mode)


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    """One uint8 image as the model receives it (:func:`normalise_pixels` of a batch of it, no padding)."""
    return normalise_pixels(pixels[None], torch.ones(1, *pixels.shape[1:], dtype=torch.bool))[0]


@pytest.mark.parametrize("center_crop", [False, True])
@pytest.mark.parametrize(
    ("size", "mode"),
    [((480, 640), "RGB"), ((640, 427), "RGB"), ((301, 517), "RGB"), ((384, 576), "RGB"), ((200, 90), "L")],
)
def test_transform_matches_the_pil_reference_within_one_level(
    size: tuple[int, int], mode: str, center_crop: bool
) -> None:
    # torchvision's uint8 antialiased bicubic computes PIL's filter in two fixed-point passes too, but rounds
    # the intermediate pass differently: at most two levels in 255 apart (4 / 255 normalised), unbiased.
    image = photo_like(np.random.default_rng(size[0] * size[1]), *size, mode=mode)
    transform = ViltTransform(image_size=96, patch_size=32, center_crop=center_crop)
    ours, reference = normalised(transform(image)), reference_transform(image, 96, 32, center_crop)
    assert ours.shape == reference.shape and ours.dtype == reference.dtype == torch.float32
    levels = (ours - reference) * 255 / 2
    assert levels.abs().max() <= 2 + 1e-3  # float32 normalisation: a level is 2 / 255 up to rounding
    assert abs(levels.mean()) < 0.05


def test_tensor_and_pil_inputs_give_the_same_pixels() -> None:
    image = photo_like(np.random.default_rng(1), 150, 230)
    tensor = F.pil_to_tensor(image)
    for transform in (ViltTransform(64, 32), ViltTransform(64, 32, center_crop=True)):
        assert torch.equal(transform(tensor), transform(image))
    augment = ViltTransform(64, 32, randaugment=True)
    for seed in range(6):  # RandAugment draws from Python's and numpy's generators
        random.seed(seed)
        np.random.seed(seed)
        from_tensor = augment(tensor)
        random.seed(seed)
        np.random.seed(seed)
        assert torch.equal(from_tensor, augment(image))


def test_transform_refuses_a_tensor_that_is_not_uint8_rgb() -> None:
    transform = ViltTransform(32, 16)
    with pytest.raises(ValueError, match=r"uint8 \[3, H, W\] RGB tensor, got torch.float32 \[3, 32, 32\]"):
        transform(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"got torch.uint8 \[1, 32, 32\]"):
        transform(torch.zeros(1, 32, 32, dtype=torch.uint8))
