"""What every dataset converter is: a :class:`DatasetConverter` streaming :class:`Record` s per split.

A converter reads a dataset's raw download (annotation files and image folders, as published) and yields
one :class:`Record` per sample: its webdataset key, its annotation in vlp's sample schema and the image
files. :func:`vlp.datamodules.convert.writer.write_shards` turns the records into webdataset shards; the
converter never writes anything.

The sample schema (what vlp's decoders read; keys a dataset lacks are omitted)::

    {"source": {"dataset": "coco", "image_id": 391895, ...},    # where the sample came from
     "captions": ["A man riding a bike.", ...],
     "objects": [{"bbox": [x, y, w, h], "category": "person", "attributes": ["red"]}, ...],
     "qa": [{"question": "What colour ...?", "answers": [10 annotator answers], ...}],
     "statement": "...", "label": true}                          # image pairs (NLVR2)

``bbox`` is in pixels of the stored image, ``[x, y, w, h]`` from the top-left corner. When the writer
shrinks an image (``max_side``) it scales every ``bbox`` of the dicts in the json's top-level lists to
match, so a record's boxes must belong to its single image.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["DatasetConverter", "InputTreeError", "Record", "chosen_splits"]


@dataclass
class Record:
    """One sample of a split, as a converter yields it.

    Attributes:
        key: unique within the split and safe as a webdataset key: no dots, no slashes.
        json: the sample's annotation in the schema of this module.
        images: webdataset extension -> the image, e.g. ``{"jpg": path}`` or, for an image pair,
            ``{"left.png": p1, "right.png": p2}``. Usually a file; the bytes themselves for an image held
            inside an archive (img2dataset shards). The bytes are stored as they are unless the writer is
            given ``max_side``; the writer sniffs the real format and fixes the extension when it is
            wrong (a ``.png`` file holding a JPEG is stored as ``.jpg``).
    """

    key: str
    json: dict[str, Any]
    images: dict[str, Path | bytes]


def chosen_splits(dataset: str, splits: str | Sequence[str], known: Collection[str]) -> list[str]:
    """A converter's ``splits`` option as a list (one name given alone is a list of one), refused unless
    they are distinct names of ``known`` and at least one."""
    splits = [splits] if isinstance(splits, str) else list(splits)
    unknown = [split for split in splits if split not in known]
    if unknown or not splits or len(set(splits)) != len(splits):
        raise ValueError(
            f"{dataset}: splits must be distinct names of {', '.join(known)}, got {splits} "
            f"({'unknown: ' + ', '.join(unknown) if unknown else 'empty or repeated'})"
        )
    return splits


class InputTreeError(FileNotFoundError):
    """A raw dataset folder lacks files the converter needs; the message lists every one of them."""


class DatasetConverter(ABC):
    """Reads one dataset's raw download and streams its samples per split.

    Subclasses take their options as keyword arguments with types, defaults and an ``Args:`` docstring
    (the ``data convert`` command builds its options from them) and pass them on with
    ``super().__init__(root, **options)``, which keeps them in :attr:`options`: the writer records them in
    the manifest and compares them when a conversion is resumed.
    """

    name: ClassVar[str]
    """The dataset's name on the command line and in the manifest (``"coco"``, ``"vqav2"``, ...)."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.root = Path(root).expanduser()
        self.options: dict[str, Any] = dict(options)

    @abstractmethod
    def required(self) -> list[Path]:
        """Files and folders that must exist; :meth:`check` lists every missing one before any work."""

    @abstractmethod
    def annotation_files(self) -> list[Path]:
        """The annotation files read; their sha256 goes into the manifest."""

    @abstractmethod
    def splits(self) -> list[str]:
        """The splits written, in order (each becomes a subfolder of shards)."""

    @abstractmethod
    def records(self, split: str) -> Iterator[Record]:
        """The split's samples, streamed. Annotation files may be loaded whole (they are megabytes); the
        images are only named, the writer reads them."""

    @abstractmethod
    def dropped(self) -> list[tuple[str, str]]:
        """``(key or id, reason)`` of everything left out while reading the annotations (an ``iscrowd``
        box, an image without captions, ...); complete once every split's records have been read."""

    def vocab(self) -> dict[str, Any] | None:
        """The dataset's lists (categories, attributes, answers), written as ``vocab.json``; ``None`` when
        it has none. Called after every split's records have been read."""
        return None

    def size(self, split: str) -> int | None:
        """The number of records of ``split`` when known without reading the images (for the progress
        bar), else ``None``."""
        return None

    def layout(self) -> str:
        """The expected layout of the raw folder, shown when files are missing; empty when not given."""
        return ""

    def check(self) -> None:
        """Raise :class:`InputTreeError` listing every missing file or folder of :meth:`required` with the
        expected layout; nothing when all are there."""
        if not self.root.is_dir():
            missing = [self.root]
        else:
            missing = [path for path in self.required() if not path.exists()]
        if not missing:
            return
        lines = [
            f"{self.name}: the raw dataset folder {self.root} is missing {len(missing)} file(s)/folder(s):"
        ]
        lines += [f"  {path}" for path in missing]
        layout = self.layout()
        if layout:
            lines += ["expected layout:", *(f"  {line}" for line in layout.strip("\n").splitlines())]
        raise InputTreeError("\n".join(lines))
