"""COCO: Karpathy's split (restval folded into train or not) and the official one, instance boxes merged,
crowd boxes and captionless images dropped and listed, the raw folder checked before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from convert_helpers import (
    BOXES,
    KARPATHY_COCO,
    coco_image_entry,
    coco_root,
    read_back,
    shard_members,
    write_image,
    write_json,
    xywh_to_cxcywh,
)

from vlp.datamodules.convert.base import InputTreeError
from vlp.datamodules.convert.coco import COCOConverter
from vlp.datamodules.convert.writer import write_shards

CATEGORY_ORDER = ["person", "car", "dog"]  # by COCO category id: 1, 3, 18


def captions(cocoid: int) -> list[str]:
    return [c.strip() for c in KARPATHY_COCO[cocoid][2]]


def key(cocoid: int) -> str:
    return f"{cocoid:012d}"


def test_karpathy_split_with_boxes_reads_back_with_restval_in_train(tmp_path: Path) -> None:
    root = coco_root(tmp_path / "raw")
    converter = COCOConverter(root, instances=True)
    manifest = write_shards(converter, tmp_path / "out", workers=1, progress=False)
    out = tmp_path / "out"
    assert list(manifest.splits) == ["train", "val", "test"]
    assert json.loads((out / "vocab.json").read_text()) == {"categories": CATEGORY_ORDER}
    train = read_back(out, "train", detection=True)
    assert sorted(train) == [key(9), key(25), key(42)]  # 42 is restval
    for cocoid in (9, 25, 42):
        assert train[key(cocoid)]["captions"] == captions(cocoid)
    dog = train[key(9)]["targets"]  # iscrowd box 903 left out
    assert dog.labels.tolist() == [CATEGORY_ORDER.index("dog"), CATEGORY_ORDER.index("person")]
    assert dog.boxes.tolist() == [
        xywh_to_cxcywh(BOXES[9][0][2], 32, 32),
        xywh_to_cxcywh(BOXES[9][1][2], 32, 32),
    ]
    assert train[key(25)]["targets"].labels.tolist() == []
    assert train[key(42)]["targets"].labels.tolist() == [CATEGORY_ORDER.index("car")]
    val = read_back(out, "val", detection=True)
    assert (
        list(val) == [key(73)] and val[key(73)]["targets"].labels.tolist() == []
    )  # box without area dropped
    assert list(read_back(out, "test")) == [key(74)]  # 133 has no captions
    annotation = json.loads(shard_members(out, "train")[f"{key(42)}.json"])
    assert annotation["source"] == {
        "dataset": "coco",
        "image_id": 42,
        "file": "val2014/COCO_val2014_000000000042.jpg",
        "karpathy_split": "restval",
    }
    assert annotation["objects"] == [{"bbox": [8.0, 16.0, 8.0, 4.0], "category": "car"}]
    assert manifest.dropped_annotations == [
        {"key": "903", "reason": "iscrowd box of image 9 (person)"},
        {"key": "905", "reason": "box [2.0, 2.0, 0.0, 5.0] of image 73 has no area"},
        {"key": key(133), "reason": "no captions"},
    ]
    assert sorted(manifest.annotation_files) == [
        "annotations/instances_train2014.json",
        "annotations/instances_val2014.json",
        "karpathy/dataset_coco.json",
    ]
    assert manifest.options == {
        "split_source": "karpathy",
        "year": 2014,
        "restval_to_train": True,
        "instances": True,
    }


def test_restval_is_its_own_split_when_not_folded(tmp_path: Path) -> None:
    root = coco_root(tmp_path / "raw")
    converter = COCOConverter(root, restval_to_train=False)
    sizes = {split: converter.size(split) for split in converter.splits()}
    assert sizes == {split: len(list(converter.records(split))) for split in converter.splits()}
    assert sizes == {"train": 2, "restval": 1, "val": 1, "test": 1}
    manifest = write_shards(
        COCOConverter(root, restval_to_train=False), tmp_path / "out", workers=1, progress=False
    )
    assert list(manifest.splits) == ["train", "restval", "val", "test"]
    assert sorted(read_back(tmp_path / "out", "train")) == [key(9), key(25)]
    assert list(read_back(tmp_path / "out", "restval")) == [key(42)]
    assert not (tmp_path / "out" / "vocab.json").exists()  # no instances: no categories
    assert "objects" not in json.loads(shard_members(tmp_path / "out", "train")[f"{key(9)}.json"])


def test_official_2017_split_from_the_captions_files(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    images = {"train": {9: "000000000009.jpg", 25: "000000000025.jpg"}, "val": {42: "000000000042.jpg"}}
    for part, files in images.items():
        for cocoid, name in files.items():
            write_image(root / f"{part}2017" / name, "JPEG", colour=cocoid)
        annotations = [
            {"image_id": cocoid, "id": 10 * cocoid + i, "caption": caption}
            for cocoid in files
            for i, caption in enumerate(KARPATHY_COCO[cocoid][2])
        ]
        write_json(
            root / "annotations" / f"captions_{part}2017.json",
            {
                "info": {"year": 2017},
                "licenses": [],
                "images": [coco_image_entry(i, n) for i, n in files.items()],
                "annotations": annotations,
            },
        )
    converter = COCOConverter(root, split_source="official", year=2017)
    manifest = write_shards(converter, tmp_path / "out", workers=1, progress=False)
    assert list(manifest.splits) == ["train", "val"]
    assert read_back(tmp_path / "out", "train") == {
        key(9): {"captions": captions(9)},
        key(25): {"captions": captions(25)},
    }
    annotation = json.loads(shard_members(tmp_path / "out", "val")[f"{key(42)}.json"])
    assert annotation["source"] == {"dataset": "coco", "image_id": 42, "file": "val2017/000000000042.jpg"}


def test_a_missing_image_is_dropped_and_listed(tmp_path: Path) -> None:
    root = coco_root(tmp_path / "raw", skip_images=(25,))
    manifest = write_shards(COCOConverter(root), tmp_path / "out", workers=1, progress=False)
    missing = root / "train2014" / "COCO_train2014_000000000025.jpg"
    assert manifest.dropped == [{"split": "train", "key": key(25), "reason": f"missing image file {missing}"}]
    assert manifest.splits["train"].samples == 2 and manifest.splits["train"].dropped == 1


def test_a_wrong_root_fails_before_any_work_naming_every_missing_file(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    write_image(root / "train2014" / "COCO_train2014_000000000009.jpg")
    with pytest.raises(InputTreeError) as error:
        write_shards(COCOConverter(root, instances=True), tmp_path / "out", workers=1, progress=False)
    message = str(error.value)
    for missing in (
        "karpathy/dataset_coco.json",
        "annotations/instances_train2014.json",
        "annotations/instances_val2014.json",
        "val2014",
    ):
        assert f"  {root / missing}\n" in message
    assert f"{root / 'train2014'}\n" not in message
    assert "missing 4 file(s)/folder(s)" in message and "expected layout:" in message
    assert not (tmp_path / "out").exists()


def test_karpathy_with_2017_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Karpathy's split is of the 2014 images"):
        COCOConverter(Path("raw"), year=2017)


def test_a_file_that_is_not_karpathys_is_named_and_once_fixed_the_same_out_is_fine(tmp_path: Path) -> None:
    root = coco_root(tmp_path / "raw")
    good = (root / "karpathy" / "dataset_coco.json").read_text()
    write_json(root / "karpathy" / "dataset_coco.json", {"annotations": []})
    with pytest.raises(ValueError, match=r"dataset_coco.json has no 'images' list of objects"):
        write_shards(COCOConverter(root), tmp_path / "out", workers=1, progress=False)
    (root / "karpathy" / "dataset_coco.json").write_text(good)  # its sha256 changed, but no shard was written
    manifest = write_shards(COCOConverter(root), tmp_path / "out", workers=1, progress=False)
    assert manifest.splits["train"].samples == 3
