"""Flickr30k: Karpathy's split file + flickr30k-images/ into train/val/test shards read back by vlp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from convert_helpers import FLICKR, flickr_root, read_back, shard_members, write_corrupt_image, write_json

from vlp.datamodules.convert.base import InputTreeError
from vlp.datamodules.convert.flickr30k import Flickr30kConverter
from vlp.datamodules.convert.writer import write_shards


def expected(split: str) -> dict[str, dict[str, list[str]]]:
    return {
        name.removesuffix(".jpg"): {"captions": [c.strip() for c in captions]}
        for name, (where, captions) in FLICKR.items()
        if where == split
    }


def test_karpathy_splits_read_back_with_their_captions(tmp_path: Path) -> None:
    root = flickr_root(tmp_path / "raw")
    manifest = write_shards(Flickr30kConverter(root), tmp_path / "out", workers=1, progress=False)
    assert {split: info.samples for split, info in manifest.splits.items()} == {
        "train": 2,
        "val": 1,
        "test": 1,
    }
    for split in ("train", "val", "test"):
        assert read_back(tmp_path / "out", split) == expected(split)
    members = shard_members(tmp_path / "out", "train")
    assert members["1000092795.jpg"] == (root / "flickr30k-images" / "1000092795.jpg").read_bytes()
    assert json.loads(members["1000092795.json"])["source"] == {
        "dataset": "flickr30k",
        "image_id": "1000092795",
        "file": "flickr30k-images/1000092795.jpg",
    }
    assert manifest.vocab is None and not (tmp_path / "out" / "vocab.json").exists()


def test_a_corrupt_image_is_dropped_and_listed(tmp_path: Path) -> None:
    root = flickr_root(tmp_path / "raw")
    write_corrupt_image(root / "flickr30k-images" / "10002456.jpg")
    manifest = write_shards(Flickr30kConverter(root), tmp_path / "out", workers=1, progress=False)
    (dropped,) = manifest.dropped
    assert (dropped["split"], dropped["key"]) == ("train", "10002456")
    assert dropped["reason"].startswith("corrupt image ")
    assert list(read_back(tmp_path / "out", "train")) == ["1000092795"]


def test_a_wrong_root_names_every_missing_file(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(InputTreeError) as error:
        write_shards(Flickr30kConverter(tmp_path / "raw"), tmp_path / "out", workers=1, progress=False)
    message = str(error.value)
    assert f"  {tmp_path / 'raw' / 'karpathy' / 'dataset_flickr30k.json'}\n" in message
    assert f"  {tmp_path / 'raw' / 'flickr30k-images'}\n" in message
    assert "flickr30k-images/1000092795.jpg" in message  # the expected layout
    assert not (tmp_path / "out").exists()


def test_coco_split_file_given_as_flickrs_is_named(tmp_path: Path) -> None:
    root = flickr_root(tmp_path / "raw")
    data = json.loads((root / "karpathy" / "dataset_flickr30k.json").read_text())
    data["images"][0]["split"] = "restval"
    write_json(root / "karpathy" / "dataset_flickr30k.json", data)
    with pytest.raises(ValueError, match=r"has 1 'restval' images: is it Flickr30k's split file\?"):
        write_shards(Flickr30kConverter(root), tmp_path / "out", workers=1, progress=False)
