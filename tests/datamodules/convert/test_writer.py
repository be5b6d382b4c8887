"""write_shards: images kept as they are or shrunk, bad images dropped and listed, the folder rules, resuming
after a kill, and the same shards for any number of workers."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from convert_helpers import (
    folder_bytes,
    image_bytes,
    read_back,
    shard_members,
    write_corrupt_image,
    write_image,
    write_json,
    xywh_to_cxcywh,
)
from PIL import Image

import vlp
from vlp.datamodules.convert import writer
from vlp.datamodules.convert.base import DatasetConverter, InputTreeError, Record
from vlp.datamodules.convert.manifest import Manifest
from vlp.datamodules.convert.writer import OutFolderError, write_shards


class ListConverter(DatasetConverter):
    """A converter over ``annotations.json``: a list of {split, key, image, captions, objects}."""

    name = "test-list"

    def __init__(self, root: Path, tag: str = "a") -> None:
        super().__init__(root, tag=tag)

    def required(self) -> list[Path]:
        return [self.root / "annotations.json", self.root / "images"]

    def annotation_files(self) -> list[Path]:
        return [self.root / "annotations.json"]

    def splits(self) -> list[str]:
        return ["train", "val"]

    def records(self, split: str) -> Iterator[Record]:
        for item in json.loads((self.root / "annotations.json").read_text()):
            if item["split"] == split:
                annotation = {"source": {"dataset": "test"}, "captions": item["captions"]}
                if "objects" in item:
                    annotation["objects"] = item["objects"]
                yield Record(item["key"], annotation, {item["ext"]: self.root / "images" / item["image"]})

    def dropped(self) -> list[tuple[str, str]]:
        return [("nocap", "no captions")]

    def vocab(self) -> dict[str, Any] | None:
        return {"categories": ["dog", "cat"]}


def item(split: str, key: str, image: str, ext: str = "jpg", **extra: Any) -> dict[str, Any]:
    return {"split": split, "key": key, "image": image, "ext": ext, "captions": [f"caption {key}"], **extra}


def raw_dataset(root: Path, train: int = 5, val: int = 2) -> Path:
    """``train`` + ``val`` good JPEGs of 32 px."""
    (root / "images").mkdir(parents=True)
    items = []
    for i in range(train + val):
        split, key = ("train", f"t{i}") if i < train else ("val", f"v{i}")
        write_image(root / "images" / f"{key}.jpg", "JPEG", colour=i)
        items.append(item(split, key, f"{key}.jpg"))
    write_json(root / "annotations.json", items)
    return root


def test_images_are_stored_byte_for_byte_and_read_back_by_the_data_module(tmp_path: Path) -> None:
    root = raw_dataset(tmp_path / "raw")
    manifest = write_shards(
        ListConverter(root), tmp_path / "out", workers=1, samples_per_shard=2, progress=False
    )
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"shard-{i:06d}.tar" for i in range(3)]
    members = shard_members(out, "train")
    for i in range(5):
        assert members[f"t{i}.jpg"] == (root / "images" / f"t{i}.jpg").read_bytes()
        assert json.loads(members[f"t{i}.json"]) == {
            "source": {"dataset": "test"},
            "captions": [f"caption t{i}"],
        }
    assert read_back(out, "train") == {f"t{i}": {"captions": [f"caption t{i}"]} for i in range(5)}
    assert read_back(out, "val") == {f"v{i}": {"captions": [f"caption v{i}"]} for i in (5, 6)}
    assert json.loads((out / "vocab.json").read_text()) == {"categories": ["dog", "cat"]}
    assert manifest == Manifest.read(out)
    assert (manifest.converter, manifest.options, manifest.vlp_version) == (
        "test-list",
        {"tag": "a"},
        vlp.__version__,
    )
    assert manifest.annotation_files == {"annotations.json": writer.sha256(root / "annotations.json")}
    assert (manifest.splits["train"].samples, manifest.splits["train"].shards) == (5, 3)
    assert (manifest.splits["val"].samples, manifest.splits["val"].shards) == (2, 1)
    assert manifest.dropped_annotations == [{"key": "nocap", "reason": "no captions"}]
    assert manifest.vocab == "vocab.json" and manifest.max_side is None and manifest.samples_per_shard == 2


def test_corrupt_and_missing_images_are_dropped_and_listed_and_wrong_extensions_fixed(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    write_image(root / "images" / "good.jpg", "JPEG")
    write_corrupt_image(root / "images" / "cut.jpg")
    write_image(root / "images" / "named-png.png", "JPEG", colour=1)  # a JPEG under a .png name
    write_image(root / "images" / "anim.gif", "GIF", colour=2)
    items = [
        item("train", "good", "good.jpg"),
        item("train", "cut", "cut.jpg"),
        item("train", "gone", "gone.jpg"),
        item("train", "named", "named-png.png", ext="png"),
        item("train", "gif", "anim.gif", ext="gif"),
    ]
    write_json(root / "annotations.json", items)
    manifest = write_shards(ListConverter(root), tmp_path / "out", workers=1, progress=False)
    out = tmp_path / "out"
    members = shard_members(out, "train")
    assert sorted(members) == ["gif.json", "gif.png", "good.jpg", "good.json", "named.jpg", "named.json"]
    assert members["named.jpg"] == (root / "images" / "named-png.png").read_bytes()
    assert Image.open(io.BytesIO(members["gif.png"])).format == "PNG"
    assert sorted(read_back(out, "train")) == ["gif", "good", "named"]
    dropped = {entry["key"]: entry for entry in manifest.dropped}
    assert sorted(dropped) == ["cut", "gone"]
    assert dropped["cut"]["split"] == "train"
    assert dropped["cut"]["reason"].startswith(f"corrupt image {root / 'images' / 'cut.jpg'}: ")
    assert dropped["gone"]["reason"] == f"missing image file {root / 'images' / 'gone.jpg'}"
    train = manifest.splits["train"]
    assert (train.samples, train.dropped) == (3, 2)
    assert train.extensions_fixed == {"png->jpg": 1}
    assert train.reencoded == {"gif->png": 1}


def test_max_side_shrinks_larger_images_in_their_format_and_scales_their_boxes(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    write_image(root / "images" / "wide.jpg", "JPEG", size=(64, 32))
    write_image(root / "images" / "small.png", "PNG", size=(16, 16))
    objects = [{"bbox": [8, 4, 32, 16], "category": "dog"}]
    items = [
        item("train", "wide", "wide.jpg", objects=objects),
        item("train", "small", "small.png", ext="png"),
    ]
    write_json(root / "annotations.json", items)
    write_shards(ListConverter(root), tmp_path / "out", workers=1, max_side=32, progress=False)
    members = shard_members(tmp_path / "out", "train")
    wide = Image.open(io.BytesIO(members["wide.jpg"]))
    assert (wide.format, wide.size) == ("JPEG", (32, 16))
    annotation = json.loads(members["wide.json"])
    assert annotation["objects"] == [{"bbox": [4.0, 2.0, 16.0, 8.0], "category": "dog"}]
    assert annotation["source"] == {"dataset": "test", "resized_from": [64, 32]}
    assert members["small.png"] == (root / "images" / "small.png").read_bytes()  # not larger: kept as it is
    assert "resized_from" not in json.loads(members["small.json"])["source"]
    decoded = read_back(tmp_path / "out", "train", detection=True)
    # the same box relative to the image: exact, the scale is a power of two
    assert decoded["wide"]["targets"].boxes.tolist() == [xywh_to_cxcywh([8, 4, 32, 16], 64, 32)]
    assert decoded["small"]["targets"].boxes.tolist() == []


def killed_after_first_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the writer die (as if killed) right after it completes its first shard."""
    commit = writer.commit_shard

    def commit_then_die(sink: writer.ShardSink) -> None:
        commit(sink)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(writer, "commit_shard", commit_then_die)


def test_a_killed_conversion_resumes_keeping_its_complete_shards_and_ends_as_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = raw_dataset(tmp_path / "raw")
    write_corrupt_image(root / "images" / "t3.jpg")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    write_shards(ListConverter(root), whole, workers=1, samples_per_shard=2, progress=False)
    with monkeypatch.context() as patch:
        killed_after_first_shard(patch)
        with pytest.raises(KeyboardInterrupt):
            write_shards(ListConverter(root), resumed, workers=1, samples_per_shard=2, progress=False)
    first = resumed / "train" / "shard-000000.tar"
    assert sorted(p.name for p in (resumed / "train").iterdir()) == ["shard-000000.tar"]  # no partial left
    assert not (resumed / "manifest.json").exists()
    first_stat = first.stat()
    write_shards(ListConverter(root), resumed, workers=1, samples_per_shard=2, progress=False)
    assert folder_bytes(resumed) == folder_bytes(whole)
    assert first.stat().st_mtime_ns == first_stat.st_mtime_ns and first.stat().st_ino == first_stat.st_ino


def test_two_workers_write_the_same_shards_as_one(tmp_path: Path) -> None:
    root = raw_dataset(tmp_path / "raw", train=11, val=3)
    write_corrupt_image(root / "images" / "t4.jpg")
    write_shards(ListConverter(root), tmp_path / "one", workers=1, samples_per_shard=3, progress=False)
    write_shards(ListConverter(root), tmp_path / "two", workers=2, samples_per_shard=3, progress=False)
    assert folder_bytes(tmp_path / "two") == folder_bytes(tmp_path / "one")
    assert len(list((tmp_path / "one" / "train").glob("*.tar"))) == 4


def test_other_settings_are_refused_naming_them_and_a_new_folder_is_fine(tmp_path: Path) -> None:
    root = raw_dataset(tmp_path / "raw")
    out = tmp_path / "out"
    write_shards(ListConverter(root), out, workers=1, progress=False)
    before = folder_bytes(out)
    with pytest.raises(OutFolderError, match=r"max_side \(--max-side\): not set there, 16 here"):
        write_shards(ListConverter(root), out, workers=1, max_side=16, progress=False)
    with pytest.raises(OutFolderError, match=r"option tag: \"a\" there, \"b\" here"):
        write_shards(ListConverter(root, tag="b"), out, workers=1, progress=False)
    write_json(root / "annotations.json", json.loads((root / "annotations.json").read_text())[:-1])
    with pytest.raises(OutFolderError, match=r"annotation file annotations.json differs"):
        write_shards(ListConverter(root), out, workers=1, progress=False)
    assert folder_bytes(out) == before
    manifest = write_shards(ListConverter(root), tmp_path / "new", workers=1, max_side=16, progress=False)
    assert manifest.max_side == 16


def test_a_folder_of_the_users_is_never_written_into(tmp_path: Path) -> None:
    root = raw_dataset(tmp_path / "raw")
    out = tmp_path / "mine"
    write_json(out / "vocab.json", {"mine": True})
    (out / "train").mkdir()
    (out / "train" / "shard-000000.tar").write_bytes(b"my own shard")
    before = folder_bytes(out)
    with pytest.raises(OutFolderError, match=r"is not empty and holds no vlp conversion"):
        write_shards(ListConverter(root), out, workers=1, progress=False)
    assert folder_bytes(out) == before
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OutFolderError, match=r"is a file"):
        write_shards(ListConverter(root), tmp_path / "file", workers=1, progress=False)
    assert (tmp_path / "file").read_text() == "mine"


def test_missing_inputs_are_all_listed_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(InputTreeError) as error:
        write_shards(ListConverter(tmp_path / "raw"), tmp_path / "out", workers=1, progress=False)
    assert f"{tmp_path / 'raw' / 'annotations.json'}" in str(error.value)
    assert f"{tmp_path / 'raw' / 'images'}" in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("key", "message"), [("a.b", "not a webdataset key"), ("t0", "occurs twice")])
def test_a_bad_or_repeated_key_is_refused(tmp_path: Path, key: str, message: str) -> None:
    root = raw_dataset(tmp_path / "raw", train=1, val=0)
    items = json.loads((root / "annotations.json").read_text())
    write_json(root / "annotations.json", [*items, item("train", key, "t0.jpg")])
    with pytest.raises(ValueError, match=message):
        write_shards(ListConverter(root), tmp_path / "out", workers=1, progress=False)


def test_bad_writer_settings_are_refused(tmp_path: Path) -> None:
    root = raw_dataset(tmp_path / "raw", train=1, val=0)
    for settings, message in [
        ({"workers": 0}, "workers must be at least 1"),
        ({"max_side": 0}, "max_side must be a positive"),
        ({"samples_per_shard": 0}, "samples_per_shard must be at least 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            write_shards(ListConverter(root), tmp_path / "out", progress=False, **settings)


def test_image_bytes_given_directly_are_stored(tmp_path: Path) -> None:
    class BytesConverter(ListConverter):
        def records(self, split: str) -> Iterator[Record]:
            if split == "train":
                yield Record("inline", {"captions": ["inline"]}, {"jpg": image_bytes("PNG")})

    root = raw_dataset(tmp_path / "raw", train=0, val=0)
    manifest = write_shards(BytesConverter(root), tmp_path / "out", workers=1, progress=False)
    assert sorted(shard_members(tmp_path / "out", "train")) == ["inline.json", "inline.png"]
    assert manifest.splits["train"].extensions_fixed == {"jpg->png": 1}


def test_an_image_pair_named_png_holding_a_jpeg_is_stored_under_its_real_extension(tmp_path: Path) -> None:
    class PairConverter(ListConverter):
        def records(self, split: str) -> Iterator[Record]:
            if split == "train":
                images = {
                    "left.png": image_bytes("JPEG", colour=1),
                    "right.png": image_bytes("PNG", colour=2),
                }
                yield Record("pair", {"statement": "two images", "label": True}, images)

    root = raw_dataset(tmp_path / "raw", train=0, val=0)
    manifest = write_shards(PairConverter(root), tmp_path / "out", workers=1, progress=False)
    members = shard_members(tmp_path / "out", "train")
    assert sorted(members) == ["pair.json", "pair.left.jpg", "pair.right.png"]
    assert members["pair.left.jpg"] == image_bytes("JPEG", colour=1)
    assert manifest.splits["train"].extensions_fixed == {"png->jpg": 1}


FORK_SERVER_PRELOAD = """
import os
from pathlib import Path
from vlp.datamodules.convert.writer import task_runner
with task_runner(2, None) as run:
    assert list(run([(0, [])])) == [(0, [])]
children = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
for proc in children:
    try:
        parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        command = (proc / "cmdline").read_bytes().replace(b"\\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        continue
    if parent == os.getpid() and "multiprocessing.forkserver" in command:
        print(command)
"""


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads the fork server's command line in /proc"
)
def test_a_conversion_starts_the_fork_server_with_the_loaders_preloaded_modules() -> None:
    """The first user of a process's fork server decides what it preloads; a conversion with workers
    before the loaders in the same process (`bench data`, a test session) must preload the loaders'
    modules, or every loader worker imports torch anew."""
    from vlp.processes import WORKER_PRELOAD

    result = subprocess.run(
        [sys.executable, "-c", FORK_SERVER_PRELOAD], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "multiprocessing.forkserver" in result.stdout
    assert repr(WORKER_PRELOAD) in result.stdout
