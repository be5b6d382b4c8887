"""NLVR2: statements about image pairs, true or false; one sample per statement.

Raw layout (the json lines of the lil-lab/nlvr repository's ``nlvr2/data`` and the image zips)::

    ROOT/train.json  ROOT/dev.json  ROOT/test1.json        one json object per line
    ROOT/images/train/<directory>/<pair>-img0.png          <pair>-img1.png (train: 100 directories)
    ROOT/images/dev/<pair>-img0.png                        (dev, test1: no directory level)

An entry's ``identifier`` is ``split-set-pair-sentence``; its images are those of ``<pair>`` (the
identifier without its last part), ``-img0`` on the left and ``-img1`` on the right. Many of these ".png"
files are JPEGs: the writer stores each under its real format (``left.jpg``), which
:class:`~vlp.datamodules.pairs.PairDecoder` reads as well as ``left.png``.

The sample key is the identifier (what NLVR2's evaluation scripts and vlp's predictions name); its json::

    {"source": {"dataset": "nlvr2", "identifier": ..., "pair": ..., "directory": 17 (train), "synset": ...,
                "query": ..., "left_url": ..., "right_url": ..., "writer": ...},
     "statement": "...", "label": true}

``label`` must be the string ``"True"`` or ``"False"`` as NLVR2 writes it; an entry with any other label,
no sentence, an unusable identifier, no ``directory`` (train) or a repeated identifier is left out and
listed as dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vlp.datamodules.convert.base import DatasetConverter, Record, chosen_splits

__all__ = ["LABELS", "SPLITS", "NLVR2Converter"]

SPLITS = ("train", "dev", "test1", "test2")
"""The json-lines files NLVR2 publishes (``test2`` is the hidden test set, public since 2022)."""
LABELS = {"True": True, "False": False}
SOURCE_FIELDS = ("synset", "query", "left_url", "right_url", "writer")
"""Fields of an entry kept under ``source`` (where the sample came from)."""


class NLVR2Converter(DatasetConverter):
    """NLVR2 json lines + image pairs -> one pair sample per statement (see the module docstring).

    Args:
        splits: the splits written, of ``train``, ``dev``, ``test1`` and ``test2``.
    """

    name = "nlvr2"

    def __init__(self, root: Path, splits: Sequence[str] = ("train", "dev", "test1")) -> None:
        splits = chosen_splits(self.name, splits, SPLITS)
        super().__init__(root, splits=splits)
        self.split_names = splits
        self._dropped: dict[str, list[tuple[str, str]]] = {}

    def statements_file(self, split: str) -> Path:
        return self.root / f"{split}.json"

    def images_folder(self, split: str) -> Path:
        return self.root / "images" / split

    def annotation_files(self) -> list[Path]:
        return [self.statements_file(split) for split in self.split_names]

    def required(self) -> list[Path]:
        return [*self.annotation_files(), *(self.images_folder(split) for split in self.split_names)]

    def layout(self) -> str:
        return """
ROOT/{train,dev,test1}.json                  (nlvr2/data of github.com/lil-lab/nlvr)
ROOT/images/train/<directory>/<pair>-img0.png, <pair>-img1.png
ROOT/images/{dev,test1}/<pair>-img0.png, <pair>-img1.png
"""

    def splits(self) -> list[str]:
        return list(self.split_names)

    def size(self, split: str) -> int:
        return sum(1 for item in self._read(split) if isinstance(item, Record))

    def records(self, split: str) -> Iterator[Record]:
        dropped: list[tuple[str, str]] = []
        self._dropped[split] = dropped
        for item in self._read(split):
            if isinstance(item, Record):
                yield item
            else:
                dropped.append(item)

    def dropped(self) -> list[tuple[str, str]]:
        return [entry for split in self.split_names for entry in self._dropped.get(split, [])]

    def _read(self, split: str) -> Iterator[Record | tuple[str, str]]:
        """The split's records, streamed line by line, and ``(key, reason)`` of each entry left out."""
        path = self.statements_file(split)
        seen: set[str] = set()
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError as exn:
                    raise ValueError(
                        f"{path}, line {number}: not json ({exn}); is it NLVR2's json-lines file?"
                    ) from None
                item = self._record(split, entry, f"{path.name}:{number}")
                if isinstance(item, Record):
                    if item.key in seen:
                        item = (item.key, f"identifier repeated ({path.name}, line {number})")
                    else:
                        seen.add(item.key)
                yield item

    def _record(self, split: str, entry: Any, where: str) -> Record | tuple[str, str]:
        """The record of one json line, or ``(identifier or file:line, why it is left out)``."""
        if not isinstance(entry, dict):
            return where, "not a json object"
        identifier = entry.get("identifier")
        if (
            not isinstance(identifier, str)
            or identifier.count("-") < 1
            or any(c in identifier for c in "./\\ ")
        ):
            return where, f"unusable identifier {identifier!r} (expected split-set-pair-sentence)"
        label = entry.get("label")
        if not isinstance(label, str) or label not in LABELS:
            return identifier, f"label {label!r} is not 'True' or 'False'"
        sentence = entry.get("sentence")
        if not isinstance(sentence, str) or not sentence.strip():
            return identifier, "no 'sentence' text"
        pair = identifier.rsplit("-", 1)[0]
        source: dict[str, Any] = {"dataset": "nlvr2", "identifier": identifier, "pair": pair}
        folder = self.images_folder(split)
        if split == "train":
            directory = entry.get("directory")
            if isinstance(directory, str) and directory.isdigit():
                directory = int(directory)
            if not isinstance(directory, int) or isinstance(directory, bool):
                return identifier, f"train entry without an integer 'directory' (got {directory!r})"
            source["directory"] = directory
            folder = folder / str(directory)
        source.update({name: entry[name] for name in SOURCE_FIELDS if isinstance(entry.get(name), str)})
        return Record(
            key=identifier,
            json={"source": source, "statement": sentence, "label": LABELS[label]},
            images={"left.png": folder / f"{pair}-img0.png", "right.png": folder / f"{pair}-img1.png"},
        )
