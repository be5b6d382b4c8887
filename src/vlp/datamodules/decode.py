"""Decoding of raw webdataset samples: images of any mode to RGB, captions, and the sample types.

Decoding (in loader workers) turns every webdataset sample into a :class:`DecodedSample` or, when it
cannot be used, a :class:`SkippedSample` marker: a corrupt or oversized image, a missing or unreadable
json, a sample without captions, a duplicate key or a sample cut off by a truncated shard. Markers travel
to the collator, so that skips are counted in the batch the main process receives
(``Batch.num_skipped`` / ``skipped_keys``). Images of any mode (greyscale, 16-bit, CMYK, with
transparency) are converted to 8-bit RGB with their colours kept.

Images are decoded into ``uint8 [3, H, W]`` tensors (:func:`decode_pixels`): RGB and greyscale JPEGs, the
photographs of real datasets, by torchvision's ``decode_jpeg`` (libjpeg-turbo, as PIL: the same pixels,
without PIL's image object and the copy out of it), every other image by PIL.
"""

from __future__ import annotations

import io
import json
import warnings
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from vlp.datamodules.parts import Decoder, Transform, Vocab
from vlp.datamodules.tar_reader import SKIP

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MAX_IMAGE_PIXELS = 89_478_485
"""Default ``max_image_pixels``: PIL's own decompression-bomb threshold (about 9459 x 9459)."""


@dataclass(frozen=True)
class SkippedSample:
    """Marker for a sample that could not be used; it flows to the collator, which counts it."""

    key: str
    reason: str


@dataclass
class DecodedSample:
    """One decoded sample: the transformed image and its annotation."""

    key: str
    image: Tensor  # [3, H, W]: uint8 from ViltTransform, normalised when collated
    captions: list[str]
    annotation: dict[str, Any] = field(default_factory=dict)  # the sample's parsed json
    orig_size: tuple[int, int] = (0, 0)  # (height, width) of the stored image, before resizing


def text_caption(txt: bytes) -> str:
    """An img2dataset ``txt`` caption: UTF-8 (a byte-order mark is dropped); a ``ValueError`` naming the
    first byte that is not, since text in another encoding would train on garbled words."""
    try:
        return txt.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exn:
        raise ValueError(
            f"txt caption is not UTF-8 text (byte {txt[exn.start]:#04x} at position {exn.start})"
        ) from None


def sample_captions(annotation: dict[str, Any], txt: bytes | None) -> list[str]:
    """Non-empty captions: the json's ``captions`` (a list, or one string), else its ``caption`` (as
    img2dataset writes it), else the ``txt`` file; none when all are missing or empty. A ``txt`` that is
    read and is not UTF-8 raises a ``ValueError`` (see :func:`text_caption`)."""
    for name in ("captions", "caption"):
        captions = annotation.get(name) or []
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list):
            continue
        found = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
        if found:
            return found
    text = text_caption(txt) if txt else ""
    return [text] if text else []


class Unusable(Exception):
    """Raised inside :meth:`ImageDecoder.decode` for a sample that cannot be used; the decoder returns
    a :class:`SkippedSample` with its message as the reason."""


def read_json(data: bytes) -> Any:
    """The parsed json of a sample; :class:`Unusable` when it cannot be read."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exn:
        raise Unusable(f"unreadable json: {exn}") from None


class ImageDecoder(Decoder):
    """What the decoders of stored images share: the bound transform and image size limit, the skip of a
    sample the shard reader cut off, and the reading of images and json.

    Runs in loader workers; picklable. Never raises for bad data, so one corrupt sample costs one sample:
    :meth:`decode` raises :class:`Unusable` and the call returns a :class:`SkippedSample` naming why.
    An image larger than the bound ``max_image_pixels`` (width x height, read from its header before
    anything is decoded) is skipped, so a decompression bomb costs nothing; ``None`` lifts vlp's limit
    (PIL's own, twice ``PIL.Image.MAX_IMAGE_PIXELS``, still applies).
    """

    def __init__(self) -> None:
        self.transform: Transform | None = None
        self.max_image_pixels: int | None = MAX_IMAGE_PIXELS

    def bind(
        self,
        transform: Transform,
        vocab: Vocab | None = None,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> Self:
        """A copy that decodes with ``transform``, skips images over ``max_image_pixels`` and reads what it
        needs of ``vocab`` (:meth:`use_vocab`)."""
        bound = self._bound_copy()
        bound.transform = transform
        bound.max_image_pixels = max_image_pixels
        bound.use_vocab(vocab or Vocab())
        return bound

    def use_vocab(self, vocab: Vocab) -> None:
        """Take the dataset's lists a decoder classifies over (:class:`~vlp.datamodules.e2e.ObjectDecoder`);
        called on the bound copy. Most decoders read none."""

    def __call__(self, sample: dict[str, Any]) -> Any:
        self._check_bound()
        key = str(sample.get("__key__", "?"))
        if SKIP in sample:
            return SkippedSample(key, str(sample[SKIP]))
        try:
            return self.decode(key, sample)
        except Unusable as exn:
            return SkippedSample(key, str(exn))

    @abstractmethod
    def decode(self, key: str, sample: dict[str, Any]) -> Any:
        """The decoded sample; :class:`Unusable` naming what is wrong with it."""

    def stored_image(self, sample: dict[str, Any], name: str | None = None) -> bytes:
        """The bytes of the image ``<ext>`` (or ``<name>.<ext>``), the first of :data:`IMAGE_EXTENSIONS`
        the sample holds."""
        prefix = "" if name is None else f"{name}."
        data = next((sample[prefix + ext] for ext in IMAGE_EXTENSIONS if prefix + ext in sample), None)
        if data is None:
            what = "image" if name is None else f"{name} image"
            raise Unusable(f"no {what} ({prefix}{'/'.join(IMAGE_EXTENSIONS)})")
        return data

    def load_image(self, data: bytes) -> Tensor:
        """The RGB pixels of ``data``, ``uint8 [3, H, W]`` (:func:`decode_pixels`); :class:`Unusable` naming
        why it failed."""
        try:
            return decode_pixels(data, self.max_image_pixels)
        # PIL signals corrupt data with many exception types (OSError, SyntaxError, ValueError, ...).
        except Exception as exn:
            raise Unusable(image_failure(exn)) from None


class SampleDecoder(ImageDecoder):
    """A decoder part: raw sample -> :class:`DecodedSample`, or a :class:`SkippedSample` saying why not
    (see :class:`ImageDecoder`).

    Args:
        require_captions: skip a sample without a caption (tasks that read other fields set it off).
    """

    def __init__(self, require_captions: bool = True) -> None:
        super().__init__()
        self.require_captions = require_captions

    def decode(self, key: str, sample: dict[str, Any]) -> DecodedSample:
        image_bytes = self.stored_image(sample)
        if "json" not in sample:
            raise Unusable("missing json")
        annotation = read_json(sample["json"])
        if not isinstance(annotation, dict):
            raise Unusable("json is not an object")
        try:
            captions = sample_captions(annotation, sample.get("txt"))
        except ValueError as exn:
            raise Unusable(str(exn)) from None
        if self.require_captions and not captions:
            raise Unusable("no caption (json 'captions' / 'caption' and txt missing or empty)")
        image = self.load_image(image_bytes)
        return DecodedSample(
            key=key,
            image=self.transform(image),
            captions=captions,
            annotation=annotation,
            orig_size=(image.shape[1], image.shape[2]),
        )


class ImageTooLarge(ValueError):
    """An image with more pixels than the decoder's ``max_image_pixels``."""


def image_failure(exn: Exception) -> str:
    """The skip reason for an image that could not be decoded."""
    if isinstance(exn, ImageTooLarge | Image.DecompressionBombError):
        return f"image too large: {exn}"
    return f"image decode failed: {type(exn).__name__}: {exn}"


def decode_image(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Fully decode image bytes to an RGB PIL image (uint8), so corrupt data fails here.

    The size is checked against ``max_pixels`` from the header, before the pixels are decoded. Any mode
    becomes 8-bit RGB with its colours kept (:func:`to_rgb`).
    """
    with open_image(data, max_pixels) as image:
        image.load()
        return to_rgb(image)


def decode_pixels(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Tensor:
    """Fully decode image bytes to ``uint8 [3, H, W]`` RGB pixels, the pixels of :func:`decode_image`.

    The header is read by PIL and the size checked against ``max_pixels`` first. An RGB or greyscale JPEG
    is then decoded by torchvision's ``decode_jpeg``, which gives PIL's pixels (both run libjpeg-turbo with
    its default settings); should it fail, PIL decodes the image, so corrupt data fails (or is read) as
    PIL says. Every other image is :func:`decode_image`'s.
    """
    with open_image(data, max_pixels) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            try:
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
            except RuntimeError:
                pass  # PIL's decode below fails with its own message, or reads what libjpeg-turbo would not
        image.load()
        return F.pil_to_tensor(to_rgb(image))


def open_image(data: bytes, max_pixels: int | None) -> Image.Image:
    """PIL's image of ``data``, its header read; :class:`ImageTooLarge` when it has more than
    ``max_pixels`` pixels (width x height; ``None``: no limit but PIL's own)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked just below
        image = Image.open(io.BytesIO(data))
    if max_pixels is not None and image.width * image.height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"{image.width}x{image.height} = {image.width * image.height} pixels, more than "
            f"max_image_pixels={max_pixels}"
        )
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode: 16-bit and 32-bit greyscale scaled to 8 bits (PIL's ``convert`` would
    clip them to white), transparent pixels composited over black, CMYK and palettes converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(image).astype(np.int64)
        grey8 = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey8, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")
