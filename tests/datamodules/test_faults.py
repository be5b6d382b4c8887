"""The fault suite: shards with every kind of bad input, read by the real reader (ShardDataModule ->
ShardStream -> tar reader -> SampleDecoder -> collator). Each bad sample is decoded correctly, or skipped,
counted and logged with its key and reason; a bad shard is logged by name; nothing crashes or hangs.

``FAULTS`` is the table benchmarks/RESULTS.md reproduces ("Bad input: what the reader does with each kind").
"""

from __future__ import annotations

import io
import json
import logging
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from shard_helpers import data_module, png_bytes, write_dataset, write_shard

from vlp.batch import Batch
from vlp.datamodules.loader import StreamLoader
from vlp.datamodules.shards import ShardDataModule

CAPTION = json.dumps({"captions": ["a test caption"]}).encode()
SMALL = {"batch_size": 4, "shuffle_buffer": 1}


def image_bytes(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise_jpeg(size: int = 64) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return image_bytes(Image.fromarray(pixels), "JPEG", quality=90)


def bomb_png(side: int = 12000) -> bytes:
    """A valid ``side`` x ``side`` 1-bit PNG of a few kilobytes, built row by row: decoding it would take
    ``side**2`` bytes as greyscale and three times that as RGB; nothing of that size is made here."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def sample(key: str, **files: bytes) -> dict[str, Any]:
    return {"__key__": key, **files}


def good(key: str) -> dict[str, Any]:
    return sample(key, png=png_bytes((200, 10, 10), (16, 16)), json=CAPTION)


@dataclass
class Fault:
    """One kind of bad input: what is written and what the reader must do with it."""

    kind: str
    shards: Callable[[Path], None]  # writes the split's shard files into the folder given
    decoded: dict[str, tuple[int, int, int] | None]  # key -> expected RGB of its (solid) image, None: any
    skipped: dict[str, str]  # key -> words of the logged reason
    shard_log: str | None = None  # words of the shard-level log line
    captions: dict[str, str] | None = None  # key -> expected caption


def shards(*groups: list[dict[str, Any]]) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        for i, group in enumerate(groups):
            write_shard(folder / f"shard-{i:06d}.tar", group)

    return write


def with_raw_shard(content: bytes) -> Callable[[Path], None]:
    """A good shard plus ``shard-000001.tar`` holding ``content``."""

    def write(folder: Path) -> None:
        write_shard(folder / "shard-000000.tar", [good("good-0"), good("good-1")])
        (folder / "shard-000001.tar").write_bytes(content)

    return write


def truncated_tar(folder: Path) -> None:
    """Four samples; the file is cut in the middle of the third one's image."""
    path = folder / "shard-000000.tar"
    write_shard(path, [good(f"s{i}") for i in range(4)])
    with tarfile.open(path) as tar:
        member = tar.getmember("s2.png")
        cut = member.offset_data + member.size // 2
    path.write_bytes(path.read_bytes()[:cut])


def tar_cut_in_a_header(folder: Path) -> None:
    """Four samples; the file ends inside the header of the third sample's first file."""
    path = folder / "shard-000000.tar"
    write_shard(path, [good(f"h{i}") for i in range(4)])
    with tarfile.open(path) as tar:
        cut = tar.getmember("h2.json").offset + 100
    path.write_bytes(path.read_bytes()[:cut])


def empty_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    return buffer.getvalue()


def image_sample(key: str, data: bytes, extension: str = "png") -> list[dict[str, Any]]:
    return [good("good-0"), sample(key, **{extension: data}, json=CAPTION), good("good-1")]


FAULTS = [
    Fault(
        "truncated JPEG",
        shards(image_sample("truncated-jpeg", noise_jpeg()[:1500], "jpg")),
        {"good-0": None, "good-1": None},
        {"truncated-jpeg": "image decode failed: OSError: image file is truncated"},
    ),
    Fault(
        "CMYK JPEG",
        shards(
            image_sample(
                "cmyk-jpeg",
                image_bytes(Image.new("RGB", (16, 16), (200, 40, 90)).convert("CMYK"), "JPEG", quality=95),
                "jpg",
            )
        ),
        {"good-0": None, "cmyk-jpeg": (200, 40, 90), "good-1": None},
        {},
    ),
    Fault(
        "greyscale PNG",
        shards(image_sample("grey", image_bytes(Image.new("L", (16, 16), 100), "PNG"))),
        {"good-0": None, "grey": (100, 100, 100), "good-1": None},
        {},
    ),
    Fault(
        "16-bit PNG",
        shards(
            image_sample(
                "grey16", image_bytes(Image.fromarray(np.full((16, 16), 100 * 256 + 77, np.uint16)), "PNG")
            )
        ),
        {"good-0": None, "grey16": (100, 100, 100), "good-1": None},
        {},
    ),
    Fault(
        "RGBA PNG bytes stored as .jpg",
        shards(
            image_sample(
                "rgba-as-jpg", image_bytes(Image.new("RGBA", (16, 16), (10, 200, 30, 255)), "PNG"), "jpg"
            )
        ),
        {"good-0": None, "rgba-as-jpg": (10, 200, 30), "good-1": None},
        {},
    ),
    Fault(
        "12000 x 12000 image",
        shards(image_sample("bomb", bomb_png())),
        {"good-0": None, "good-1": None},
        {"bomb": "image too large: 12000x12000 = 144000000 pixels, more than max_image_pixels=89478485"},
    ),
    Fault(
        "missing caption",
        shards([good("good-0"), sample("no-caption", png=png_bytes((1, 2, 3)), json=b'{"objects": []}')]),
        {"good-0": None},
        {"no-caption": "no caption"},
    ),
    Fault(
        "empty caption",
        shards(
            [good("good-0"), sample("empty-caption", png=png_bytes((1, 2, 3)), json=b'{"captions": ["  "]}')]
        ),
        {"good-0": None},
        {"empty-caption": "no caption"},
    ),
    Fault(
        "non-UTF-8 txt caption",
        shards(
            [
                good("good-0"),
                sample("latin1-txt", jpg=noise_jpeg(), txt="café au lait".encode("latin-1"), json=b"{}"),
            ]
        ),
        {"good-0": None},
        {"latin1-txt": "txt caption is not UTF-8 text (byte 0xe9 at position 3)"},
    ),
    Fault(
        "non-UTF-8 json",
        shards(
            [
                good("good-0"),
                sample(
                    "latin1-json", png=png_bytes((1, 2, 3)), json='{"captions": ["café"]}'.encode("latin-1")
                ),
            ]
        ),
        {"good-0": None},
        {"latin1-json": "unreadable json"},
    ),
    Fault(
        "malformed json",
        shards(
            [
                good("good-0"),
                sample("bad-json", png=png_bytes((1, 2, 3)), json=b'{"captions": ["unterminated'),
            ]
        ),
        {"good-0": None},
        {"bad-json": "unreadable json"},
    ),
    Fault(
        "duplicate keys in a shard",
        shards(
            [good("dup"), good("other"), sample("dup", png=png_bytes((0, 0, 250), (16, 16)), json=CAPTION)]
        ),
        {"dup": (200, 10, 10), "other": None},
        {"dup": "duplicate key in shard"},
    ),
    Fault(
        "truncated tar",
        truncated_tar,
        {"s0": None, "s1": None},
        {"s2": "cut off by the end of truncated shard"},
        shard_log="is truncated in s2.png",
    ),
    Fault(
        "tar cut inside a file header",
        tar_cut_in_a_header,
        {"h0": None, "h1": None},
        {},
        shard_log="is truncated after 4 file(s)",
    ),
    Fault(
        "empty shard (0 bytes)",
        with_raw_shard(b""),
        {"good-0": None, "good-1": None},
        {},
        shard_log="cannot read shard",
    ),
    Fault(
        "empty shard (a tar of no files)",
        with_raw_shard(empty_tar()),
        {"good-0": None, "good-1": None},
        {},
        shard_log="holds no samples",
    ),
    Fault(
        "shard that is not a tar",
        with_raw_shard(b"this is not a tar file " * 40),
        {"good-0": None, "good-1": None},
        {},
        shard_log="cannot read shard",
    ),
    Fault(
        "img2dataset shard, caption in json 'caption'",
        shards(
            [
                sample(
                    "000000001",
                    jpg=image_bytes(Image.new("RGB", (20, 16), (30, 60, 90)), "JPEG", quality=95),
                    json=json.dumps(
                        {"caption": "a dog on a beach", "url": "http://x/1.jpg", "status": "success"}
                    ).encode(),
                )
            ]
        ),
        {"000000001": None},
        {},
        captions={"000000001": "a dog on a beach"},
    ),
]


def read_split(root: Path, **options: Any) -> tuple[list[Batch], ShardDataModule]:
    dm = data_module(root, **{**SMALL, "num_workers": 0, **options})
    dm.setup("fit")
    # as the model gets them: skips tallied before the transfer, pixels normalised after it
    batches = [
        dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0) for batch in dm.val_dataloader()
    ]
    return batches, dm


def rows(batches: list[Batch]) -> dict[str, tuple[Batch, int]]:
    """Key -> (batch, row) of every decoded sample; a key decoded twice is an error."""
    found: dict[str, tuple[Batch, int]] = {}
    for batch in batches:
        for row, key in enumerate(batch.keys):
            assert key not in found, f"{key} decoded twice"
            found[key] = (batch, row)
    return found


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", FAULTS, ids=[f.kind for f in FAULTS])
def test_bad_input_is_decoded_or_skipped_counted_and_named(
    fault: Fault, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "val").mkdir()
    fault.shards(tmp_path / "val")
    (tmp_path / "vocab.json").write_text("{}")
    with caplog.at_level(logging.INFO):
        batches, dm = read_split(tmp_path)
    decoded = rows(batches)
    assert set(decoded) == set(fault.decoded)
    for key, colour in fault.decoded.items():
        batch, row = decoded[key]
        image = batch.pixels[row][:, batch.pixel_mask[row]]
        if colour is not None:
            expected = (torch.tensor(colour, dtype=torch.float32) / 255 - 0.5) / 0.5
            # JPEG (lossy) rounds a solid colour by a few levels; PNG images are exact.
            tolerance = 6 / 255 if "jpeg" in key else 1e-6
            torch.testing.assert_close(image.mean(dim=1), expected, atol=tolerance, rtol=0)
    for key, caption in (fault.captions or {}).items():
        batch, row = decoded[key]
        assert batch.captions is not None and batch.captions[row] == caption
    skipped = [key for batch in batches for key in batch.skipped_keys]
    assert sorted(skipped) == sorted(fault.skipped) and dm.num_skipped == len(fault.skipped)
    for key, reason in fault.skipped.items():
        assert f"skipped sample {key}: {reason}" in caplog.text
    if fault.shard_log is not None:
        assert fault.shard_log in caplog.text and "shard-00000" in caplog.text


@pytest.mark.timeout(300)
def test_every_fault_together_through_workers_and_ranks(tmp_path: Path) -> None:
    """All the bad shards in one split, read by 2 loader workers and by 2 simulated ranks x 2 workers:
    no crash, no hang; one rank reads every decodable sample once; in training each rank runs exactly
    the batches the rank equaliser counted from the shard headers, so none waits for another."""
    for split in ("train", "val"):
        for i, fault in enumerate(FAULTS):
            parts = tmp_path / "parts" / split / str(i)
            fault.shards(parts)
            (tmp_path / split).mkdir(exist_ok=True)
            for j, path in enumerate(sorted(parts.iterdir())):
                path.rename(tmp_path / split / f"shard-{i:03d}-{j}.tar")
    write_dataset(tmp_path, {})
    decodable = sum(len(f.decoded) for f in FAULTS)

    batches, dm = read_split(tmp_path, num_workers=2)
    assert sum(len(b) for b in batches) == decodable
    assert dm.num_skipped == sum(len(f.skipped) for f in FAULTS)

    for rank in range(2):
        dm = data_module(tmp_path, **{**SMALL, "num_workers": 2})
        dm.setup("fit")
        dm._world = lambda rank=rank: (rank, 2)  # type: ignore[method-assign]  # what a trainer would report
        loader = dm.train_dataloader()
        assert isinstance(loader, StreamLoader) and loader.equalise_ranks
        stream, workers = loader.stream, max(1, loader.num_workers)
        counts = dict(zip(stream.urls, stream.sample_counts or [], strict=True))
        for epoch in range(2):
            counted = [
                sum(item.count(counts[item.url]) for item in stream.worker_items(epoch, w, workers))
                for w in range(workers)
            ]
            read = [sum(1 for _ in stream.raw_samples(epoch, w, workers)) for w in range(workers)]
            assert read == counted
            assert len(list(loader)) == stream.common_batches(epoch, workers) > 0
