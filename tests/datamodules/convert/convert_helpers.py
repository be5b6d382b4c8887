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


# ---- raw COCO and Flickr30k in their published schemas ------------------------------------------------

CATEGORIES = [  # as instances_*.json lists them: not in id order
    {"supercategory": "animal", "id": 18, "name": "dog"},
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
]
KARPATHY_COCO = {  # cocoid -> (Karpathy split, folder, captions)
    9: ("train", "train2014", ["A dog on a sofa. ", "a brown dog sleeping"]),
    25: ("train", "train2014", ["A giraffe eating leaves."]),
    42: ("restval", "val2014", ["A red car parked by the road."]),
    73: ("val", "val2014", ["A motorbike in a garage."]),
    74: ("test", "val2014", ["A man walking a dog."]),
    133: ("test", "val2014", []),  # no captions: dropped
}
BOXES = {  # cocoid -> [(annotation id, category_id, bbox, iscrowd)]
    9: [
        (901, 18, [1.5, 2.0, 10.0, 12.0], 0),
        (902, 1, [4.0, 4.0, 20.0, 8.5], 0),
        (903, 1, [0.0, 0.0, 32.0, 32.0], 1),
    ],
    42: [(904, 3, [8.0, 16.0, 8.0, 4.0], 0)],
    73: [(905, 1, [2.0, 2.0, 0.0, 5.0], 0)],  # a box without area: dropped
}


def karpathy_coco_json(images: dict[int, tuple[str, str, list[str]]]) -> dict[str, Any]:
    """``dataset_coco.json`` as Karpathy published it."""
    entries, sentid = [], 0
    for imgid, (cocoid, (split, folder, captions)) in enumerate(images.items()):
        sentences = []
        for caption in captions:
            tokens = caption.lower().strip(" .").split()
            sentences.append({"tokens": tokens, "raw": caption, "imgid": imgid, "sentid": sentid})
            sentid += 1
        entries.append(
            {
                "filepath": folder,
                "sentids": [s["sentid"] for s in sentences],
                "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
                "imgid": imgid,
                "split": split,
                "sentences": sentences,
                "cocoid": cocoid,
            }
        )
    return {"images": entries, "dataset": "coco"}


def coco_image_entry(cocoid: int, file_name: str) -> dict[str, Any]:
    return {
        "license": 3,
        "file_name": file_name,
        "coco_url": f"http://images.cocodataset.org/x/{file_name}",
        "height": 32,
        "width": 32,
        "date_captured": "2013-11-14 16:28:13",
        "flickr_url": "http://farm1.staticflickr.com/x.jpg",
        "id": cocoid,
    }


def instances_json(ids_files: dict[int, str]) -> dict[str, Any]:
    """``instances_<part><year>.json`` for the images ``ids_files`` (id -> file name)."""
    annotations = []
    for cocoid in ids_files:
        for ann_id, category_id, bbox, crowd in BOXES.get(cocoid, []):
            segmentation: Any = (
                {"counts": [0, 1024], "size": [32, 32]} if crowd else [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]]
            )
            annotations.append(
                {
                    "segmentation": segmentation,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": crowd,
                    "image_id": cocoid,
                    "bbox": bbox,
                    "category_id": category_id,
                    "id": ann_id,
                }
            )
    return {
        "info": {"description": "COCO 2014 Dataset", "year": 2014},
        "images": [coco_image_entry(i, name) for i, name in ids_files.items()],
        "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "x"}],
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def coco_root(root: Path, skip_images: tuple[int, ...] = ()) -> Path:
    """A raw COCO 2014 folder: Karpathy's split file, the official captions and instances, 32-px JPEGs."""
    parts: dict[str, dict[int, str]] = {"train": {}, "val": {}}
    for cocoid, (_, folder, _) in KARPATHY_COCO.items():
        name = f"COCO_{folder}_{cocoid:012d}.jpg"
        parts[folder.removesuffix("2014")][cocoid] = name
        if cocoid not in skip_images:
            write_image(root / folder / name, "JPEG", colour=cocoid)
    write_json(root / "karpathy" / "dataset_coco.json", karpathy_coco_json(KARPATHY_COCO))
    for part, ids_files in parts.items():
        captions = [
            {"image_id": cocoid, "id": 1000 + 10 * cocoid + i, "caption": caption}
            for cocoid in ids_files
            for i, caption in enumerate(KARPATHY_COCO[cocoid][2])
        ]
        official = instances_json(ids_files)
        write_json(
            root / "annotations" / f"captions_{part}2014.json",
            {**{k: official[k] for k in ("info", "images", "licenses")}, "annotations": captions},
        )
        write_json(root / "annotations" / f"instances_{part}2014.json", official)
    return root


FLICKR = {  # file name -> (split, captions)
    "1000092795.jpg": (
        "train",
        ["Two young guys with shaggy hair look at their hands. ", "Two friends enjoy time."],
    ),
    "10002456.jpg": ("train", ["Several men in hard hats are operating a giant pulley system."]),
    "1000268201.jpg": ("val", ["A child in a pink dress is climbing up a set of stairs."]),
    "1000344755.jpg": ("test", ["Someone in a blue shirt and hat is standing on stairs."]),
}


def flickr_root(root: Path) -> Path:
    """A raw Flickr30k folder: Karpathy's ``dataset_flickr30k.json`` and 32-px JPEGs."""
    entries, sentid = [], 0
    for imgid, (filename, (split, captions)) in enumerate(FLICKR.items()):
        sentences = []
        for caption in captions:
            sentences.append(
                {"tokens": caption.lower().split(), "raw": caption, "imgid": imgid, "sentid": sentid}
            )
            sentid += 1
        entries.append(
            {
                "sentids": [s["sentid"] for s in sentences],
                "imgid": imgid,
                "sentences": sentences,
                "split": split,
                "filename": filename,
            }
        )
        write_image(root / "flickr30k-images" / filename, "JPEG", colour=imgid)
    write_json(root / "karpathy" / "dataset_flickr30k.json", {"images": entries, "dataset": "flickr30k"})
    return root
