"""decode_pixels: torchvision's JPEG decoder where it gives PIL's pixels, PIL everywhere else."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

import vlp.datamodules.decode as decode_module
from vlp.datamodules.decode import ImageTooLarge, decode_image, decode_pixels


def photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth random colour field with noise, which JPEG encodes as it does photographs."""
    coarse = rng.integers(0, 256, (max(2, height // 12), max(2, width // 12), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noisy = np.clip(smooth.astype(np.int16) + rng.integers(-16, 17, smooth.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pil_pixels(data: bytes) -> torch.Tensor:
    return F.pil_to_tensor(decode_image(data))


@pytest.fixture
def jpeg_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls to torchvision's decoder (the fast path)."""
    calls: list[int] = []
    real = decode_module.decode_jpeg

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decode_module, "decode_jpeg", counting)
    return calls


JPEGS = [
    ("RGB", {"quality": 90}),  # 4:2:0, as most photographs
    ("RGB", {"quality": 75, "subsampling": 1}),  # 4:2:2
    ("RGB", {"quality": 95, "subsampling": 0}),  # 4:4:4
    ("RGB", {"quality": 85, "progressive": True}),
    ("RGB", {"quality": 85, "optimize": True, "restart_marker_blocks": 2}),
    ("L", {"quality": 90}),  # greyscale
]


@pytest.mark.parametrize(("mode", "options"), JPEGS)
@pytest.mark.parametrize("size", [(48, 64), (37, 53), (61, 16)])
def test_rgb_and_grey_jpegs_are_decoded_by_torchvision_with_pils_pixels(
    mode: str, options: dict[str, Any], size: tuple[int, int], jpeg_calls: list[int]
) -> None:
    data = encoded(photo(np.random.default_rng(size[0]), *size).convert(mode), "JPEG", **options)
    pixels = decode_pixels(data)
    assert jpeg_calls == [1]
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, *size)
    assert torch.equal(pixels, pil_pixels(data))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("CMYK JPEG", encoded(photo(np.random.default_rng(1), 24, 40).convert("CMYK"), "JPEG", quality=90)),
        ("RGB PNG", encoded(photo(np.random.default_rng(2), 24, 40), "PNG")),
        ("RGBA PNG", encoded(photo(np.random.default_rng(3), 24, 40).convert("RGBA"), "PNG")),
        ("palette PNG", encoded(photo(np.random.default_rng(4), 24, 40).convert("P"), "PNG")),
        ("16-bit PNG", encoded(Image.fromarray(np.full((24, 40), 40000, dtype=np.uint16)), "PNG")),
        ("WebP", encoded(photo(np.random.default_rng(5), 24, 40), "WEBP", lossless=True)),
    ],
)
def test_other_images_are_decoded_by_pil(name: str, data: bytes, jpeg_calls: list[int]) -> None:
    pixels = decode_pixels(data)
    assert jpeg_calls == [], name
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 24, 40)
    assert torch.equal(pixels, pil_pixels(data))


def failure(decode: Callable[[bytes], object], data: bytes) -> tuple[type, str]:
    try:
        decode(data)
    except Exception as exn:  # PIL signals corrupt data with several exception types
        return type(exn), str(exn)
    raise AssertionError("the data decoded")


def test_a_corrupt_jpeg_fails_as_pil_says() -> None:
    data = encoded(photo(np.random.default_rng(6), 48, 64), "JPEG", quality=90)
    for cut in (data[: len(data) // 2], data[:-2], data[:300]):
        assert failure(decode_pixels, cut) == failure(decode_image, cut)


def test_jpeg_data_torchvision_reads_with_a_warning_is_read_as_pil_reads_it() -> None:
    data = encoded(photo(np.random.default_rng(7), 48, 64), "JPEG", quality=90)
    middle = len(data) // 2
    damaged = data[:middle] + b"\x00" * 40 + data[middle + 40 :]  # corrupt entropy-coded data, no end cut
    assert torch.equal(decode_pixels(damaged), pil_pixels(damaged))


def test_the_size_limit_is_checked_before_decoding(jpeg_calls: list[int]) -> None:
    data = encoded(photo(np.random.default_rng(8), 40, 50), "JPEG", quality=90)
    with pytest.raises(ImageTooLarge, match="50x40 = 2000 pixels, more than max_image_pixels=1999"):
        decode_pixels(data, max_pixels=1999)
    assert jpeg_calls == []
    assert decode_pixels(data, max_pixels=2000).shape == (3, 40, 50)
    assert decode_pixels(data, max_pixels=None).shape == (3, 40, 50)
