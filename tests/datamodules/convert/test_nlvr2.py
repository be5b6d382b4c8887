"""NLVR2 converter on a tiny raw folder in the published schema (json lines, image pairs, a JPEG ".png")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlp.datamodules.convert.base import InputTreeError, Record
from vlp.datamodules.convert.nlvr2 import NLVR2Converter

RED, GREEN, BLUE, GREY = (200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)


def entry(identifier: str, sentence: str, label: Any, **extra: Any) -> dict[str, Any]:
    """A line of NLVR2's json files, with the fields it publishes."""
    return {
        "validation": {"61": "False"},
        "sentence": sentence,
        "left_url": f"https://example.org/{identifier}/left.jpg",
        "writer": "61",
        "label": label,
        "right_url": f"https://example.org/{identifier}/right.jpg",
        "synset": "beer bottle",
        "query": "some beer bottles38",
        "identifier": identifier,
        **extra,
    }


def write_lines(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")


def write_image(path: Path, colour: tuple[int, int, int], kind: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path, format=kind)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """train: pair train-10-0 (two statements, directory 7) whose left ".png" is a JPEG, then entries
    with a lower-case label, a json boolean label, no directory, and a repeated identifier;
    dev: pair dev-850-0 (one statement, no directory level)."""
    root = tmp_path / "nlvr2"
    root.mkdir()
    write_lines(
        root / "train.json",
        [
            entry("train-10-0-0", "The left image has more red.", "True", directory=7),
            entry("train-10-0-1", "Both images are green.", "False", directory=7),
            entry("train-11-0-0", "lower-case label", "true", directory=7),
            entry("train-11-1-0", "boolean label", True, directory=7),
            entry("train-12-0-0", "no directory", "True"),
            entry("train-10-0-1", "repeated identifier", "True", directory=7),
        ],
    )
    write_lines(root / "dev.json", [entry("dev-850-0-0", "The right image is blue.", "True")])
    write_image(root / "images/train/7/train-10-0-img0.png", RED, kind="JPEG")  # a ".png" that is a JPEG
    write_image(root / "images/train/7/train-10-0-img1.png", GREEN)
    write_image(root / "images/dev/dev-850-0-img0.png", GREY)
    write_image(root / "images/dev/dev-850-0-img1.png", BLUE)
    return root


def records(converter: NLVR2Converter, split: str) -> list[Record]:
    return list(converter.records(split))


def test_one_sample_per_statement_with_the_pair_of_images(raw: Path) -> None:
    converter = NLVR2Converter(raw, splits=["train", "dev"])
    first, second = records(converter, "train")
    assert [first.key, second.key] == ["train-10-0-0", "train-10-0-1"]
    pair = raw / "images" / "train" / "7"
    assert (
        first.images
        == second.images
        == {
            "left.png": pair / "train-10-0-img0.png",
            "right.png": pair / "train-10-0-img1.png",
        }
    )
    assert first.json == {
        "source": {
            "dataset": "nlvr2",
            "identifier": "train-10-0-0",
            "pair": "train-10-0",
            "directory": 7,
            "synset": "beer bottle",
            "query": "some beer bottles38",
            "left_url": "https://example.org/train-10-0-0/left.jpg",
            "right_url": "https://example.org/train-10-0-0/right.jpg",
            "writer": "61",
        },
        "statement": "The left image has more red.",
        "label": True,
    }
    assert second.json["label"] is False
    (dev,) = records(converter, "dev")
    assert dev.images == {
        "left.png": raw / "images" / "dev" / "dev-850-0-img0.png",
        "right.png": raw / "images" / "dev" / "dev-850-0-img1.png",
    }
    assert "directory" not in dev.json["source"] and dev.json["label"] is True
    assert converter.size("train") == 2 and converter.size("dev") == 1


def test_labels_are_parsed_strictly_and_bad_entries_listed(raw: Path) -> None:
    converter = NLVR2Converter(raw, splits=["train"])
    records(converter, "train")
    assert converter.dropped() == [
        ("train-11-0-0", "label 'true' is not 'True' or 'False'"),
        ("train-11-1-0", "label True is not 'True' or 'False'"),
        ("train-12-0-0", "train entry without an integer 'directory' (got None)"),
        ("train-10-0-1", "identifier repeated (train.json, line 6)"),
    ]
    records(converter, "train")  # reading a split again does not repeat its dropped entries
    assert len(converter.dropped()) == 4


def test_missing_files_are_all_named_before_any_work(raw: Path) -> None:
    (raw / "dev.json").unlink()
    with pytest.raises(InputTreeError) as error:
        NLVR2Converter(raw).check()  # train, dev and test1 by default
    message = str(error.value)
    assert "missing 3 file(s)/folder(s)" in message
    for missing in (raw / "dev.json", raw / "test1.json", raw / "images" / "test1"):
        assert str(missing) in message


def test_bad_json_and_options_are_named(raw: Path) -> None:
    with pytest.raises(ValueError, match="unknown: val"):
        NLVR2Converter(raw, splits=["train", "val"])
    (raw / "dev.json").write_text('{"identifier": "dev-1-0-0"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev\.json, line 1: not json"):
        records(NLVR2Converter(raw, splits=["dev"]), "dev")


def test_shards_read_back_through_the_pair_decoder(raw: Path, tmp_path: Path) -> None:
    import torch

    from vlp.datamodules.convert.writer import write_shards
    from vlp.datamodules.pairs import DecodedPair, PairCollator, PairDecoder
    from vlp.datamodules.tar_reader import read_shard
    from vlp.datamodules.transforms import ViltTransform

    out = tmp_path / "out"
    manifest = write_shards(NLVR2Converter(raw, splits=["train", "dev"]), out, workers=1, progress=False)
    assert manifest.splits["train"].samples == 2 and manifest.splits["dev"].samples == 1
    assert manifest.splits["train"].extensions_fixed == {"png->jpg": 2}  # the JPEG left image, twice
    assert manifest.splits["dev"].extensions_fixed == {}
    assert len(manifest.dropped_annotations) == 4 and not (out / "vocab.json").exists()

    train = list(read_shard(str(out / "train" / "shard-000000.tar")))
    assert sorted(name for name in train[0] if not name.startswith("__")) == ["json", "left.jpg", "right.png"]
    decode = PairDecoder().bind(ViltTransform(32, 16), max_image_pixels=None)
    pairs = [decode(sample) for sample in train]
    assert all(isinstance(p, DecodedPair) for p in pairs)
    assert [(p.key, p.statement, p.label) for p in pairs] == [
        ("train-10-0-0", "The left image has more red.", 1),
        ("train-10-0-1", "Both images are green.", 0),
    ]
    left, right = pairs[0].left, pairs[0].right
    left, right = left.float(), right.float()
    assert left[0].mean() > left[1].mean() and right[1].mean() > right[0].mean()  # red left, green right
    batch = PairCollator().for_split(train=False)(pairs, torch.Generator().manual_seed(0))
    assert batch.pair_labels.tolist() == [1, 0] and batch.pixels_right is not None
