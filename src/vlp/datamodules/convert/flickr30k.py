"""Flickr30k captions in Karpathy's split.

Raw layout (the images from the Flickr30k request form, Karpathy's ``caption_datasets.zip``)::

    RAW/karpathy/dataset_flickr30k.json     Karpathy split: train 29000, val 1014, test 1000 images
    RAW/flickr30k-images/1000092795.jpg

A sample's key is the image's file name without extension (``1000092795``); its json holds ``source``
(dataset, image id = that name, file) and the five ``captions``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlp.datamodules.convert.base import DatasetConverter, Record
from vlp.datamodules.convert.coco import KarpathyImage, read_karpathy

__all__ = ["Flickr30kConverter"]

SPLITS = ("train", "val", "test")


class Flickr30kConverter(DatasetConverter):
    """Flickr30k captions in Karpathy's split (train, val, test)."""

    name = "flickr30k"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._images: list[KarpathyImage] | None = None
        self._dropped: dict[tuple[str, str], None] = {}

    @property
    def karpathy_file(self) -> Path:
        return self.root / "karpathy" / "dataset_flickr30k.json"

    @property
    def image_dir(self) -> Path:
        return self.root / "flickr30k-images"

    def required(self) -> list[Path]:
        return [self.karpathy_file, self.image_dir]

    def annotation_files(self) -> list[Path]:
        return [self.karpathy_file]

    def layout(self) -> str:
        return "\n".join(
            [
                "RAW/",
                "  karpathy/dataset_flickr30k.json   (Karpathy's caption_datasets.zip)",
                "  flickr30k-images/1000092795.jpg ... (flickr30k-images.tar.gz)",
            ]
        )

    def splits(self) -> list[str]:
        return list(SPLITS)

    def images(self) -> list[KarpathyImage]:
        if self._images is None:
            self._images = read_karpathy(self.karpathy_file)
            restval = sum(image.split == "restval" for image in self._images)
            if restval:
                raise ValueError(
                    f"{self.karpathy_file} has {restval} 'restval' images: is it Flickr30k's split file?"
                )
        return self._images

    def size(self, split: str) -> int | None:
        return sum(image.split == split and bool(image.captions) for image in self.images())

    def records(self, split: str) -> Iterator[Record]:
        if split not in SPLITS:
            raise ValueError(f"flickr30k has no split {split!r}; its splits are {', '.join(SPLITS)}")
        for image in self.images():
            if image.split != split:
                continue
            key = Path(image.filename).stem.replace(".", "_")
            if not image.captions:
                self._dropped[(key, "no captions")] = None
                continue
            annotation: dict[str, Any] = {
                "source": {
                    "dataset": "flickr30k",
                    "image_id": key,
                    "file": f"flickr30k-images/{image.filename}",
                },
                "captions": list(image.captions),
            }
            yield Record(key, annotation, {"jpg": self.image_dir / image.filename})

    def dropped(self) -> list[tuple[str, str]]:
        return list(self._dropped)
