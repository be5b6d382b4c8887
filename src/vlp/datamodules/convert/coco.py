"""COCO captions, from Karpathy's split or the official files, optionally with the instance boxes.

Raw layout (the official downloads from cocodataset.org, Karpathy's ``caption_datasets.zip``)::

    RAW/karpathy/dataset_coco.json                  Karpathy split (train/restval/val/test), 2014 images
    RAW/annotations/captions_{train,val}2014.json   official captions (or 2017)
    RAW/annotations/instances_{train,val}2014.json  official boxes (or 2017), with instances=True
    RAW/train2014/COCO_train2014_000000000009.jpg   images (train2017/000000000009.jpg for 2017)
    RAW/val2014/COCO_val2014_000000000042.jpg

A sample's key is its COCO image id on 12 digits (``000000391895``); its json holds ``source``
(dataset, image id, file, Karpathy split), ``captions`` and, with ``instances``, ``objects``: each box
``[x, y, w, h]`` in pixels with its category name. Crowd boxes (``iscrowd``) and boxes without area are
left out and listed in the manifest; ``vocab.json`` lists the 80 category names in COCO's id order.

:class:`KarpathyImage` and :func:`read_karpathy` also read Karpathy's Flickr30k file
(:mod:`~vlp.datamodules.convert.flickr30k`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vlp.datamodules.convert.base import DatasetConverter, Record

__all__ = ["COCOConverter", "KarpathyImage", "read_karpathy"]

KARPATHY_SPLITS = ("train", "restval", "val", "test")


@dataclass(frozen=True)
class KarpathyImage:
    """One image of a Karpathy split file: its split, folder (COCO only), file name, id and captions."""

    split: str
    filepath: str
    filename: str
    image_id: int | None  # COCO's id (cocoid); None for Flickr30k
    captions: tuple[str, ...]


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exn:
        raise ValueError(f"{path} is not readable json: {exn}") from None


def _entries(data: Any, name: str, path: Path, what: str) -> list[dict[str, Any]]:
    """``data[name]``, a list of objects; a ``ValueError`` naming the file when it is not."""
    entries = data.get(name) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError(f"{path} has no {name!r} list of objects: is it {what}?")
    return entries


def _field(entry: dict[str, Any], name: str, path: Path, where: str) -> Any:
    if name not in entry:
        raise ValueError(f"{path}: {where} has no {name!r}")
    return entry[name]


def read_karpathy(path: Path) -> list[KarpathyImage]:
    """The images of a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``) with their
    non-empty ``raw`` captions, stripped, in the file's order."""
    images = []
    for i, entry in enumerate(_entries(read_json_file(path), "images", path, "a Karpathy split file")):
        where = f"images[{i}]"
        split = _field(entry, "split", path, where)
        if split not in KARPATHY_SPLITS:
            raise ValueError(f"{path}: {where} has split {split!r}, not one of {', '.join(KARPATHY_SPLITS)}")
        sentences = _field(entry, "sentences", path, where)
        captions = tuple(
            s["raw"].strip() for s in sentences if isinstance(s.get("raw"), str) and s["raw"].strip()
        )
        cocoid = entry.get("cocoid")
        images.append(
            KarpathyImage(
                split=split,
                filepath=str(entry.get("filepath", "")),
                filename=str(_field(entry, "filename", path, where)),
                image_id=None if cocoid is None else int(cocoid),
                captions=captions,
            )
        )
    return images


@dataclass(frozen=True)
class OfficialImage:
    image_id: int
    file_name: str
    captions: tuple[str, ...]


class COCOConverter(DatasetConverter):
    """COCO captions (Karpathy's split or the official one), optionally with the instance boxes.

    Args:
        split_source: ``karpathy``: the splits train, restval, val and test of
            ``karpathy/dataset_coco.json`` (2014 images); ``official``: train and val of
            ``annotations/captions_{train,val}<year>.json``.
        year: the official release, 2014 or 2017 (Karpathy's split is of the 2014 images).
        restval_to_train: with Karpathy's split, write the ``restval`` images into train (as ViLT trains);
            false writes them as a split of their own.
        instances: add each image's boxes from ``annotations/instances_{train,val}<year>.json`` as
            ``objects`` (crowd boxes left out and listed) and the category names as ``vocab.json``.
    """

    name = "coco"

    def __init__(
        self,
        root: Path,
        split_source: Literal["karpathy", "official"] = "karpathy",
        year: Literal[2014, 2017] = 2014,
        restval_to_train: bool = True,
        instances: bool = False,
    ) -> None:
        if split_source not in ("karpathy", "official"):
            raise ValueError(f"split_source must be 'karpathy' or 'official', got {split_source!r}")
        if year not in (2014, 2017):
            raise ValueError(f"year must be 2014 or 2017, got {year!r}")
        if split_source == "karpathy" and year != 2014:
            raise ValueError(
                f"year={year}: Karpathy's split is of the 2014 images; use year=2014, or "
                "split_source=official for the 2017 split"
            )
        super().__init__(
            root, split_source=split_source, year=year, restval_to_train=restval_to_train, instances=instances
        )
        self.split_source = split_source
        self.year = year
        self.restval_to_train = restval_to_train
        self.instances = instances
        self._karpathy: list[KarpathyImage] | None = None
        self._official: dict[str, list[OfficialImage]] = {}
        self._objects: dict[str, dict[int, list[dict[str, Any]]]] = {}
        self._categories: list[str] | None = None
        self._category_file: Path | None = None
        self._dropped: dict[tuple[str, str], None] = {}

    # -------------------------------------------------------------------------------------- the files

    @property
    def karpathy_file(self) -> Path:
        return self.root / "karpathy" / "dataset_coco.json"

    def captions_file(self, part: str) -> Path:
        return self.root / "annotations" / f"captions_{part}{self.year}.json"

    def instances_file(self, part: str) -> Path:
        return self.root / "annotations" / f"instances_{part}{self.year}.json"

    def image_dir(self, part: str) -> Path:
        return self.root / f"{part}{self.year}"

    def annotation_files(self) -> list[Path]:
        files = [self.karpathy_file] if self.split_source == "karpathy" else []
        if self.split_source == "official":
            files += [self.captions_file(part) for part in ("train", "val")]
        if self.instances:
            files += [self.instances_file(part) for part in ("train", "val")]
        return files

    def required(self) -> list[Path]:
        return [*self.annotation_files(), self.image_dir("train"), self.image_dir("val")]

    def layout(self) -> str:
        year = self.year
        lines = ["RAW/"]
        if self.split_source == "karpathy":
            lines.append("  karpathy/dataset_coco.json          (Karpathy's caption_datasets.zip)")
        else:
            lines.append(f"  annotations/captions_train{year}.json  (annotations_trainval{year}.zip)")
            lines.append(f"  annotations/captions_val{year}.json")
        if self.instances:
            lines.append(f"  annotations/instances_train{year}.json (annotations_trainval{year}.zip)")
            lines.append(f"  annotations/instances_val{year}.json")
        prefix = "COCO_train2014_" if year == 2014 else ""
        lines.append(f"  train{year}/{prefix}000000000009.jpg ... (train{year}.zip)")
        lines.append(f"  val{year}/{prefix.replace('train', 'val')}000000000042.jpg ... (val{year}.zip)")
        return "\n".join(lines)

    # -------------------------------------------------------------------------------------- the splits

    def splits(self) -> list[str]:
        if self.split_source == "official":
            return ["train", "val"]
        return ["train", "val", "test"] if self.restval_to_train else ["train", "restval", "val", "test"]

    def size(self, split: str) -> int | None:
        if self.split_source == "official":
            return sum(bool(image.captions) for image in self.official_images(split))
        wanted = self._karpathy_splits(split)
        return sum(image.split in wanted and bool(image.captions) for image in self.karpathy_images())

    def records(self, split: str) -> Iterator[Record]:
        if split not in self.splits():
            raise ValueError(f"coco has no split {split!r}; its splits are {', '.join(self.splits())}")
        if self.split_source == "karpathy":
            yield from self._karpathy_records(split)
        else:
            yield from self._official_records(split)

    def dropped(self) -> list[tuple[str, str]]:
        return list(self._dropped)

    def vocab(self) -> dict[str, Any] | None:
        if not self.instances:
            return None
        if self._categories is None:
            self.objects("train")
        return {"categories": list(self._categories or [])}

    def _drop(self, key: str, reason: str) -> None:
        self._dropped[(key, reason)] = None

    def _karpathy_splits(self, split: str) -> set[str]:
        return {"train", "restval"} if split == "train" and self.restval_to_train else {split}

    def karpathy_images(self) -> list[KarpathyImage]:
        if self._karpathy is None:
            self._karpathy = read_karpathy(self.karpathy_file)
        return self._karpathy

    def _karpathy_records(self, split: str) -> Iterator[Record]:
        wanted = self._karpathy_splits(split)
        for image in self.karpathy_images():
            if image.split not in wanted:
                continue
            if image.image_id is None:
                raise ValueError(f"{self.karpathy_file}: image {image.filename} has no 'cocoid'")
            if image.filepath not in ("train2014", "val2014"):
                raise ValueError(
                    f"{self.karpathy_file}: image {image.filename} has filepath {image.filepath!r}, "
                    "not train2014 or val2014"
                )
            part = image.filepath.removesuffix("2014")
            source = {
                "dataset": "coco",
                "image_id": image.image_id,
                "file": f"{image.filepath}/{image.filename}",
                "karpathy_split": image.split,
            }
            record = self._record(
                image.image_id, image.captions, source, part, image.filepath, image.filename
            )
            if record is not None:
                yield record

    def official_images(self, part: str) -> list[OfficialImage]:
        """The images of ``captions_<part><year>.json`` with their non-empty captions, stripped."""
        if part not in self._official:
            path = self.captions_file(part)
            data = read_json_file(path)
            captions: dict[int, list[str]] = defaultdict(list)
            for i, annotation in enumerate(_entries(data, "annotations", path, "COCO's captions file")):
                caption = _field(annotation, "caption", path, f"annotations[{i}]")
                if isinstance(caption, str) and caption.strip():
                    captions[int(_field(annotation, "image_id", path, f"annotations[{i}]"))].append(
                        caption.strip()
                    )
            self._official[part] = [
                OfficialImage(
                    image_id=int(_field(image, "id", path, f"images[{i}]")),
                    file_name=str(_field(image, "file_name", path, f"images[{i}]")),
                    captions=tuple(captions.get(int(image["id"]), ())),
                )
                for i, image in enumerate(_entries(data, "images", path, "COCO's captions file"))
            ]
        return self._official[part]

    def _official_records(self, split: str) -> Iterator[Record]:
        folder = f"{split}{self.year}"
        for image in self.official_images(split):
            source = {"dataset": "coco", "image_id": image.image_id, "file": f"{folder}/{image.file_name}"}
            record = self._record(image.image_id, image.captions, source, split, folder, image.file_name)
            if record is not None:
                yield record

    def _record(
        self,
        image_id: int,
        captions: tuple[str, ...],
        source: dict[str, Any],
        part: str,
        folder: str,
        name: str,
    ) -> Record | None:
        key = f"{image_id:012d}"
        if not captions:
            self._drop(key, "no captions")
            return None
        annotation: dict[str, Any] = {"source": source, "captions": list(captions)}
        if self.instances:
            annotation["objects"] = self.objects(part).get(image_id, [])
        return Record(key, annotation, {"jpg": self.root / folder / name})

    # -------------------------------------------------------------------------------------- the boxes

    def objects(self, part: str) -> dict[int, list[dict[str, Any]]]:
        """Image id -> its boxes in ``instances_<part><year>.json`` (``[x, y, w, h]`` pixels, category
        name), crowd boxes and boxes without area left out and listed in :meth:`dropped`."""
        if part not in self._objects:
            self._objects[part] = self._read_instances(self.instances_file(part))
        return self._objects[part]

    def _read_instances(self, path: Path) -> dict[int, list[dict[str, Any]]]:
        data = read_json_file(path)
        categories = {
            int(_field(c, "id", path, f"categories[{i}]")): str(_field(c, "name", path, f"categories[{i}]"))
            for i, c in enumerate(_entries(data, "categories", path, "COCO's instances file"))
        }
        names = [categories[i] for i in sorted(categories)]
        if self._categories is None:
            self._categories, self._category_file = names, path
        elif names != self._categories:
            raise ValueError(f"{path} lists other categories than {self._category_file}")
        objects: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for i, annotation in enumerate(_entries(data, "annotations", path, "COCO's instances file")):
            where = f"annotations[{i}]"
            ann_id = str(annotation.get("id", where))
            image_id = int(_field(annotation, "image_id", path, where))
            category = categories.get(_field(annotation, "category_id", path, where))
            bbox = _field(annotation, "bbox", path, where)
            if annotation.get("iscrowd"):
                self._drop(ann_id, f"iscrowd box of image {image_id} ({category})")
            elif category is None:
                self._drop(
                    ann_id, f"box of image {image_id} with unknown category_id {annotation['category_id']}"
                )
            elif not _has_area(bbox):
                self._drop(ann_id, f"box {bbox} of image {image_id} has no area")
            else:
                objects[image_id].append({"bbox": [float(v) for v in bbox], "category": category})
        return dict(objects)


def _has_area(bbox: Any) -> bool:
    """``bbox`` is ``[x, y, w, h]`` of finite numbers with positive width and height."""
    return (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        and bbox[2] > 0
        and bbox[3] > 0
    )
