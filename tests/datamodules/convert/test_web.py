"""Web pairs: img2dataset's webdataset shards and files folders, and [path, caption] JSON / TSV lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds
from convert_helpers import image_bytes, read_back, shard_members, write_image, write_json

from vlp.datamodules.convert.base import InputTreeError
from vlp.datamodules.convert.web import WebConverter
from vlp.datamodules.convert.writer import write_shards


def meta(key: str, status: str = "success") -> dict:
    """img2dataset's per-sample json."""
    return {
        "url": f"http://example.com/{key}.jpg",
        "key": key,
        "status": status,
        "error_message": None if status == "success" else "HTTP Error 404: Not Found",
        "width": 32,
        "height": 32,
        "original_width": 64,
        "original_height": 64,
        "exif": "{}",
        "sha256": "0" * 64,
    }


def img2dataset_shards(root: Path) -> Path:
    """Two img2dataset shards as its webdataset writer writes them (jpg + txt + json per sample)."""
    root.mkdir(parents=True)
    samples = {
        "00000.tar": [
            ("000000000", "a dog on the beach", 1),
            ("000000001", "", 2),
            ("000000002", "two cats", 3),
        ],
        "00001.tar": [("000010000", "a red bus\n", 4)],
    }
    for shard, items in samples.items():
        with wds.TarWriter(str(root / shard)) as sink:
            for key, caption, colour in items:
                sink.write(
                    {
                        "__key__": key,
                        "jpg": image_bytes("JPEG", colour=colour),
                        "txt": caption,
                        "json": json.dumps(meta(key), indent=4),
                    }
                )
    return root


def test_img2dataset_shards_are_converted_and_read_back(tmp_path: Path) -> None:
    root = img2dataset_shards(tmp_path / "raw")
    manifest = write_shards(WebConverter(root), tmp_path / "out", workers=1, progress=False)
    assert read_back(tmp_path / "out", "train") == {
        "000000000": {"captions": ["a dog on the beach"]},
        "000000002": {"captions": ["two cats"]},
        "000010000": {"captions": ["a red bus"]},
    }
    assert manifest.dropped_annotations == [{"key": "000000001", "reason": "no caption"}]
    members = shard_members(tmp_path / "out", "train")
    assert members["000000000.jpg"] == image_bytes("JPEG", colour=1)
    assert json.loads(members["000010000.json"]) == {
        "source": {
            "dataset": "web",
            "shard": "00001.tar",
            "key": "000010000",
            "url": "http://example.com/000010000.jpg",
        },
        "captions": ["a red bus"],
    }


def test_img2dataset_files_folders_are_converted_with_failed_downloads_listed(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    for key, caption in (("000000000", "a kite in the sky"), ("000000001", "a boat")):
        write_image(root / "00000" / f"{key}.jpg", colour=int(key))
        (root / "00000" / f"{key}.txt").write_text(caption)
        write_json(root / "00000" / f"{key}.json", meta(key))
    write_json(root / "00000" / "000000002.json", meta("000000002", status="failed_to_download"))
    write_json(root / "00000_stats.json", {"count": 3, "successes": 2})
    manifest = write_shards(WebConverter(root), tmp_path / "out", workers=1, progress=False)
    assert read_back(tmp_path / "out", "train") == {
        "000000000": {"captions": ["a kite in the sky"]},
        "000000001": {"captions": ["a boat"]},
    }
    assert manifest.dropped_annotations == [
        {"key": "000000002", "reason": "img2dataset status 'failed_to_download': HTTP Error 404: Not Found"}
    ]


@pytest.mark.parametrize("kind", ["json", "tsv"])
def test_a_list_of_pairs_is_converted_with_missing_images_listed(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "raw"
    write_image(root / "images" / "a.jpg", colour=1)
    write_image(root / "images" / "b.png", "PNG", colour=2)
    pairs = [
        ["images/a.jpg", "a first caption"],
        ["images/b.png", "a second\tcaption"],
        ["images/gone.jpg", "lost"],
    ]
    if kind == "json":
        listing = write_json(tmp_path / "pairs.json", pairs)
        converter = WebConverter(root, pairs=listing)
    else:
        listing = tmp_path / "pairs.tsv"
        listing.write_text("path\tcaption\n" + "".join(f"{p}\t{c}\n" for p, c in pairs), encoding="utf-8")
        converter = WebConverter(root, pairs=listing, skip_header=True)
    manifest = write_shards(converter, tmp_path / "out", workers=1, progress=False)
    assert read_back(tmp_path / "out", "train") == {
        "000000000": {"captions": ["a first caption"]},
        "000000001": {"captions": ["a second\tcaption"]},
    }
    assert manifest.dropped == [
        {"split": "train", "key": "000000002", "reason": f"missing image file {root / 'images' / 'gone.jpg'}"}
    ]
    assert manifest.annotation_files == {str(listing): manifest.annotation_files[str(listing)]}
    assert sorted(shard_members(tmp_path / "out", "train")) == [
        "000000000.jpg",
        "000000000.json",
        "000000001.json",
        "000000001.png",
    ]


def test_a_tsv_line_without_a_tab_is_named(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    listing = tmp_path / "pairs.tsv"
    listing.write_text("a.jpg\tfine\nb.jpg no tab here\n")
    with pytest.raises(ValueError, match=r"pairs.tsv, line 2: no TAB between the image path and the caption"):
        write_shards(
            WebConverter(tmp_path / "raw", pairs=listing), tmp_path / "out", workers=1, progress=False
        )


def test_a_folder_without_img2dataset_output_fails_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "notes.md").write_text("hello")
    with pytest.raises(InputTreeError, match=r"holds no img2dataset output"):
        write_shards(WebConverter(tmp_path / "raw"), tmp_path / "out", workers=1, progress=False)
    with pytest.raises(InputTreeError, match=r"missing 1 file"):
        write_shards(
            WebConverter(tmp_path / "raw", pairs=tmp_path / "none.tsv"), tmp_path / "out", progress=False
        )
    assert not (tmp_path / "out").exists()
