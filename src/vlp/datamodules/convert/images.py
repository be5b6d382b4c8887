"""One record's images read, checked and, when asked, shrunk: the work the writer's worker processes do.

Each image is decoded in full, so a truncated or corrupt file is found here and its record dropped with
the reason, rather than at training time. The stored bytes are the file's own unless the image is shrunk
(``max_side``) or its format is one vlp's decoders do not read (GIF, BMP, TIFF, ... are stored as PNG,
losslessly). The extension is the real format's, whatever the record said.

This module imports only PIL: worker processes import it.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlp.datamodules.convert.base import Record

STORED_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
"""PIL format -> the extension it is stored under; MPO is a JPEG with extra frames (camera images)."""
EXTENSION_FORMATS = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp"}
"""Extensions a record may give -> the stored extension of their format."""
SAVE_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
SAVE_OPTIONS: dict[str, dict[str, Any]] = {"jpg": {"quality": 95}, "png": {}, "webp": {"quality": 95}}
PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")


class Dropped(Exception):
    """A record that cannot be stored; the message is the reason recorded in the manifest."""


@dataclass
class Prepared:
    """A record ready to write (``sample``) or dropped (``reason``), with what was changed on the way."""

    key: str
    sample: dict[str, bytes] | None = None
    reason: str = ""
    fixed: list[str] = field(default_factory=list)  # "png->jpg": an extension that was not the format
    reencoded: list[str] = field(default_factory=list)  # "gif->png": a format the decoders do not read


@dataclass
class StoredImage:
    extension: str
    data: bytes
    size: tuple[int, int]  # (width, height) as stored
    original_size: tuple[int, int]
    reencoded_from: str | None = None  # the PIL format of an image stored as PNG


def prepare_batch(records: list[Record], max_side: int | None) -> list[Prepared]:
    """:func:`prepare` of each record, in order (one task of a worker process)."""
    return [prepare(record, max_side) for record in records]


def prepare(record: Record, max_side: int | None) -> Prepared:
    """The record's webdataset sample (``__key__``, its images, ``json``), or why it was dropped."""
    prepared = Prepared(record.key)
    sample: dict[str, bytes] = {}
    resized: dict[str, tuple[int, int]] = {}
    scale: tuple[float, float] | None = None
    try:
        for name, source in record.images.items():
            prefix, _, given = name.rpartition(".")
            stored = store_image(source, given.lower(), max_side)
            if stored.reencoded_from is not None:
                prepared.reencoded.append(f"{stored.reencoded_from.lower()}->{stored.extension}")
            elif stored.extension != EXTENSION_FORMATS.get(given.lower()):
                prepared.fixed.append(f"{given}->{stored.extension}")
            stored_name = f"{prefix}.{stored.extension}" if prefix else stored.extension
            sample[stored_name] = stored.data
            if stored.size != stored.original_size:
                resized[stored_name] = stored.original_size
                (w0, h0), (w1, h1) = stored.original_size, stored.size
                scale = (w1 / w0, h1 / h0)
    except Dropped as exn:
        prepared.reason = str(exn)
        return prepared
    annotation = record.json
    if resized:
        annotation = resized_annotation(annotation, resized, scale if len(record.images) == 1 else None)
    sample["json"] = json.dumps(annotation, sort_keys=True, ensure_ascii=False).encode("utf-8")
    prepared.sample = {"__key__": record.key, **sample}  # type: ignore[dict-item]
    return prepared


def read_source(source: Path | bytes) -> bytes:
    """The image's bytes; :class:`Dropped` naming the file when it is missing or unreadable."""
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise Dropped(f"missing image file {source}") from None
    except OSError as exn:
        raise Dropped(f"unreadable image file {source}: {exn.strerror or exn}") from None


def store_image(source: Path | bytes, given: str, max_side: int | None) -> StoredImage:
    """The image as it is stored: checked by a full decode, its extension from its real format, shrunk
    to ``max_side`` when larger; :class:`Dropped` when it cannot be read."""
    data = read_source(source)
    where = "" if isinstance(source, bytes | bytearray) else f" {source}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    # PIL signals corrupt data with many exception types (OSError, SyntaxError, ValueError, ...).
    except Exception as exn:
        raise Dropped(f"corrupt image{where}: {type(exn).__name__}: {exn}") from None
    with image:
        size, found = image.size, image.format or "unknown"
        extension = STORED_FORMATS.get(found)
        if extension is None:  # a format the decoders do not read: stored as PNG, losslessly
            image = image if image.mode in PNG_MODES else image.convert("RGB")
            return StoredImage("png", encode(image, "png"), size, size, reencoded_from=found)
        if max_side is None or max(size) <= max_side:
            return StoredImage(extension, data, size, size)
        shrunk = shrink(image, max_side, extension)
        return StoredImage(extension, encode(shrunk, extension, image.info), shrunk.size, size)


def shrink(image: Image.Image, max_side: int, extension: str) -> Image.Image:
    """The image scaled (bicubic) so that its longer side is ``max_side``, aspect ratio kept."""
    width, height = image.size
    factor = max_side / max(width, height)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    if image.mode == "P":  # palette images are resized in full colour
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    if extension == "jpg" and image.mode not in ("L", "RGB", "CMYK"):
        image = image.convert("RGB")
    return image.resize(size, Image.Resampling.BICUBIC)


def encode(image: Image.Image, extension: str, info: dict[str, Any] | None = None) -> bytes:
    """``image`` encoded as ``extension``, keeping the colour profile and EXIF of ``info``."""
    options = dict(SAVE_OPTIONS[extension])
    for name in ("icc_profile", "exif"):
        if info and info.get(name):
            options[name] = info[name]
    buffer = io.BytesIO()
    image.save(buffer, format=SAVE_FORMATS[extension], **options)
    return buffer.getvalue()


def resized_annotation(
    annotation: dict[str, Any], resized: dict[str, tuple[int, int]], scale: tuple[float, float] | None
) -> dict[str, Any]:
    """A copy of ``annotation`` for shrunk images: ``source.resized_from`` gives the original
    ``[width, height]`` (per image name for several images) and, for a single image (``scale``), every
    ``bbox`` of the dicts in the top-level lists is scaled to the stored pixels."""
    copy = json.loads(json.dumps(annotation))
    source = copy.setdefault("source", {})
    if len(resized) == 1 and scale is not None:
        source["resized_from"] = list(next(iter(resized.values())))
    else:
        source["resized_from"] = {name: list(size) for name, size in resized.items()}
    if scale is None:
        return copy
    sx, sy = scale
    for value in copy.values():
        if not isinstance(value, list):
            continue
        for item in value:
            bbox = item.get("bbox") if isinstance(item, dict) else None
            if isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox):
                x, y, w, h = bbox
                item["bbox"] = [round(x * sx, 3), round(y * sy, 3), round(w * sx, 3), round(h * sy, 3)]
    return copy
