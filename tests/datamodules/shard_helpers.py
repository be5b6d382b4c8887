"""Small webdataset shard writers and a data-module builder shared by the data-module tests."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image

from vlp.datamodules.collate import PretrainCollator
from vlp.datamodules.decode import SampleDecoder
from vlp.datamodules.parts import Collator, Decoder
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.transforms import ViltTransform


def data_module(
    root: Path | str,
    decoder: Decoder | None = None,
    collator: Collator | None = None,
    image_size: int = 32,
    patch_size: int = 16,
    randaugment: bool = False,
    **reader: Any,
) -> ShardDataModule:
    """A :class:`ShardDataModule` over ``root`` with small images; pre-training parts unless given."""
    return ShardDataModule(
        str(root),
        transform=ViltTransform(image_size, patch_size, randaugment),
        decoder=SampleDecoder() if decoder is None else decoder,
        collator=PretrainCollator() if collator is None else collator,
        **reader,
    )


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def good_sample(key: str) -> dict[str, Any]:
    record = {"captions": [f"caption of {key}", "a red square"], "objects": [], "qa": []}
    return {"__key__": key, "png": png_bytes((200, 10, 10)), "json": json.dumps(record).encode()}


def write_shard(path: Path, samples: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def write_dataset(root: Path, shards: dict[str, list[list[dict[str, Any]]]]) -> None:
    for split, split_shards in shards.items():
        for i, samples in enumerate(split_shards):
            write_shard(root / split / f"shard-{i:06d}.tar", samples)
    (root / "vocab.json").write_text(json.dumps({"categories": ["square"]}))


def keyed_shards(prefix: str, num_shards: int, per_shard: int) -> list[list[dict[str, Any]]]:
    return [[good_sample(f"{prefix}{s}-{i}") for i in range(per_shard)] for s in range(num_shards)]


def varied_sample(key: str, index: int) -> dict[str, Any]:
    """A sample whose pixels and captions depend on its index, so equal batches mean equal samples."""
    colour = (37 * index % 256, 91 * index % 256, 53 * index % 256)
    captions = [f"a shape number {index}", f"the colour {colour[0]} of {key}", "a red square"]
    record = {"captions": captions, "objects": [], "qa": []}
    return {"__key__": key, "png": png_bytes(colour), "json": json.dumps(record).encode()}


def shards_of(sizes: list[int], prefix: str = "t") -> list[list[dict[str, Any]]]:
    counter = iter(range(10**6))
    return [[varied_sample(f"{prefix}{s}-{i}", next(counter)) for i in range(n)] for s, n in enumerate(sizes)]
