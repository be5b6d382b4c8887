"""Tiny raw-dataset fixtures and a reader of converted shards through vlp's own data module."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from PIL import Image

from vlp.datamodules.decode import SampleDecoder
from vlp.datamodules.e2e import E2ECollator, ObjectDecoder
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.transforms import ViltTransform


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (32, 32), colour: int = 0) -> bytes:
    """An image of ``size`` (width, height) in ``fmt``, its colour a function of ``colour``."""
    buffer = io.BytesIO()
    image = Image.new("RGB", size, ((40 * colour) % 256, (90 + 30 * colour) % 256, 200))
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, fmt: str = "JPEG", size: tuple[int, int] = (32, 32), colour: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(fmt, size, colour))
    return path


def write_corrupt_image(path: Path) -> Path:
    """A JPEG cut in half: it opens but cannot be decoded."""
    data = image_bytes("JPEG", (32, 32))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def shard_members(out: Path, split: str) -> dict[str, bytes]:
    """Every member of the split's shards: tar member name -> bytes."""
    members = {}
    for shard in sorted((out / split).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                members[member.name] = tar.extractfile(member).read()
    return members


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_back(out: Path, split: str, detection: bool = False) -> dict[str, dict[str, Any]]:
    """The split as vlp's ShardDataModule decodes it: key -> captions (and detection targets), with every
    sample decoded (none skipped)."""
    module = ShardDataModule(
        str(out),
        transform=ViltTransform(32, 16, False),
        decoder=ObjectDecoder() if detection else SampleDecoder(),
        collator=E2ECollator(targets=detection, mlm_probability=0.0, itm=False),
        val_split=split,
        batch_size=4,
        num_workers=0,
    )
    module.setup("validate")
    found: dict[str, dict[str, Any]] = {}
    for batch in module.val_dataloader():
        batch = module.on_before_batch_transfer(batch, 0)
        assert batch.skipped_keys == []
        for i, key in enumerate(batch.keys):
            found[key] = {"captions": batch.references[i]}
            if detection:
                found[key]["targets"] = batch.targets[i]
    return found


def xywh_to_cxcywh(bbox: list[float], width: int, height: int) -> list[float]:
    """A pixel ``[x, y, w, h]`` box as the decoder's normalised ``[cx, cy, w, h]``."""
    x, y, w, h = bbox
    return [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
