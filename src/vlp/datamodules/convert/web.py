"""Web image-text pairs: img2dataset's output, or a list of ``[image path, caption]`` pairs.

Raw layouts::

    RAW/00000.tar, 00001.tar, ...          img2dataset --output_format webdataset: <key>.jpg + .txt + .json
    RAW/00000/000000000.jpg (.txt, .json)  img2dataset --output_format files (or the files directly in RAW)
    PAIRS.json                             [["images/a.jpg", "a caption"], ...], paths relative to RAW
    PAIRS.tsv                              images/a.jpg<TAB>a caption, one pair a line

A caption is the sample's ``.txt`` (UTF-8) or else its json's ``caption``; a sample without one, or one
img2dataset did not download (its json's ``status`` is not ``success``), is left out and listed. Keys are
img2dataset's own (``000000012``) or, for a list of pairs, the pair's position (``000000000``, ...).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlp.datamodules.convert.base import DatasetConverter, InputTreeError, Record

__all__ = ["WebConverter"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SAMPLE_EXTENSIONS = (*IMAGE_EXTENSIONS, "txt", "json")


class WebConverter(DatasetConverter):
    """Web image-text pairs (img2dataset's output, or a JSON / TSV list of pairs) as one split.

    Args:
        pairs: a ``.json`` file holding a list of ``[image path, caption]`` pairs, or a ``.tsv`` file of
            ``image path<TAB>caption`` lines; image paths are relative to the root (or absolute). Without
            it, the root is img2dataset's output folder (its ``*.tar`` shards or its files).
        split: the split the pairs are written to.
        skip_header: the TSV file's first line is a header, not a pair.
    """

    name = "web"

    def __init__(
        self, root: Path, pairs: Path | None = None, split: str = "train", skip_header: bool = False
    ) -> None:
        if pairs is not None and Path(pairs).suffix.lower() not in (".json", ".tsv"):
            raise ValueError(f"pairs {pairs} must be a .json list of [path, caption] pairs or a .tsv file")
        super().__init__(root, pairs=pairs, split=split, skip_header=skip_header)
        self.pairs = None if pairs is None else Path(pairs).expanduser()
        self.split = split
        self.skip_header = skip_header
        self._dropped: dict[tuple[str, str], None] = {}

    # -------------------------------------------------------------------------------------- the files

    def required(self) -> list[Path]:
        return [self.root] if self.pairs is None else [self.root, self.pairs]

    def annotation_files(self) -> list[Path]:
        """The list of pairs; for img2dataset's output its ``*.parquet`` files (every sample's url,
        caption and download status), as the captions themselves are inside the shards."""
        if self.pairs is not None:
            return [self.pairs]
        return sorted(self.root.glob("*.parquet"))

    def layout(self) -> str:
        if self.pairs is not None:
            return f"{self.pairs}: a .json list of [image path, caption] or a .tsv of path<TAB>caption\nRAW/<image path>"
        return "\n".join(
            [
                "RAW/00000.tar, 00001.tar, ...        (img2dataset --output_format webdataset)",
                "or RAW/00000/000000000.jpg + .txt + .json (img2dataset --output_format files)",
            ]
        )

    def shards(self) -> list[Path]:
        return sorted(p for p in self.root.glob("*.tar") if p.is_file())

    def sample_folders(self) -> list[Path]:
        """The folders holding img2dataset's files: RAW's numbered subfolders, or RAW itself."""
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.isdigit())
        return folders or [self.root]

    def check(self) -> None:
        super().check()
        if self.pairs is not None or self.shards():
            return
        if not any(_files(folder) for folder in self.sample_folders()):
            raise InputTreeError(
                f"web: {self.root} holds no img2dataset output (no *.tar shards, no <key>.jpg + <key>.txt "
                f"files) and no --pairs file was given; expected layout:\n{self.layout()}"
            )

    # -------------------------------------------------------------------------------------- the records

    def splits(self) -> list[str]:
        return [self.split]

    def size(self, split: str) -> int | None:
        if self.pairs is not None and self.pairs.suffix.lower() == ".json":
            return len(self._json_pairs())
        return None

    def records(self, split: str) -> Iterator[Record]:
        if split != self.split:
            raise ValueError(f"web writes one split, {self.split!r}; got {split!r}")
        if self.pairs is not None:
            yield from self._pair_records()
        elif self.shards():
            for shard in self.shards():
                yield from self._shard_records(shard)
        else:
            for folder in self.sample_folders():
                yield from self._folder_records(folder)

    def dropped(self) -> list[tuple[str, str]]:
        return list(self._dropped)

    def _drop(self, key: str, reason: str) -> None:
        self._dropped[(key, reason)] = None

    def _record(
        self, key: str, caption: str, image: Path | bytes, ext: str, source: dict[str, Any]
    ) -> Record | None:
        if not caption:
            self._drop(key, "no caption")
            return None
        return Record(key, {"source": {"dataset": "web", **source}, "captions": [caption]}, {ext: image})

    def _sample(self, key: str, parts: dict[str, Any], where: dict[str, Any]) -> Record | None:
        """An img2dataset sample from its parts (extension -> bytes or file); ``None`` when it is dropped."""
        meta: dict[str, Any] = {}
        if "json" in parts:
            try:
                loaded = json.loads(_read(parts["json"]))
                meta = loaded if isinstance(loaded, dict) else {}
            except (ValueError, UnicodeDecodeError) as exn:
                self._drop(key, f"unreadable json: {exn}")
                return None
        status = meta.get("status", "success")
        if status != "success":
            self._drop(key, f"img2dataset status {status!r}: {meta.get('error_message')}")
            return None
        try:
            caption = _text(_read(parts["txt"])) if "txt" in parts else str(meta.get("caption") or "").strip()
        except ValueError as exn:
            self._drop(key, str(exn))
            return None
        ext = next((ext for ext in IMAGE_EXTENSIONS if ext in parts), None)
        if ext is None:
            self._drop(key, "no image (jpg/jpeg/png/webp)")
            return None
        source = {**where, "key": key, **({"url": meta["url"]} if meta.get("url") else {})}
        return self._record(key, caption, parts[ext], ext, source)

    def _shard_records(self, shard: Path) -> Iterator[Record]:
        """A shard's samples, read in one pass: a sample's files are consecutive in the tar."""
        key, parts = None, {}
        try:
            with tarfile.open(shard, "r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = member.name.rsplit("/", 1)[-1]
                    stem, _, ext = name.partition(".")
                    if stem != key:
                        if key is not None:
                            record = self._sample(key, parts, {"shard": shard.name})
                            if record is not None:
                                yield record
                        key, parts = stem, {}
                    data = tar.extractfile(member)
                    if ext.lower() in SAMPLE_EXTENSIONS and data is not None:
                        parts[ext.lower()] = data.read()
        except (tarfile.TarError, OSError) as exn:
            self._drop(shard.name, f"unreadable shard, the rest of it left out: {exn}")
            return
        if key is not None:
            record = self._sample(key, parts, {"shard": shard.name})
            if record is not None:
                yield record

    def _folder_records(self, folder: Path) -> Iterator[Record]:
        by_key: dict[str, dict[str, Path]] = {}
        for path in _files(folder):
            stem, _, ext = path.name.partition(".")
            by_key.setdefault(stem, {})[ext.lower()] = path
        where = {} if folder == self.root else {"folder": folder.name}
        for key in sorted(by_key):
            record = self._sample(key, by_key[key], where)
            if record is not None:
                yield record

    def _json_pairs(self) -> list[Any]:
        assert self.pairs is not None
        try:
            pairs = json.loads(self.pairs.read_text(encoding="utf-8"))
        except ValueError as exn:
            raise ValueError(f"{self.pairs} is not readable json: {exn}") from None
        if not isinstance(pairs, list):
            raise ValueError(f"{self.pairs} must hold a list of [image path, caption] pairs")
        return pairs

    def _pairs(self) -> Iterator[tuple[str, str]]:
        """``(path, caption)`` of each pair of the list; a ``ValueError`` naming a malformed one."""
        assert self.pairs is not None
        if self.pairs.suffix.lower() == ".json":
            for i, pair in enumerate(self._json_pairs()):
                if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)):
                    raise ValueError(f"{self.pairs}: item {i} is {pair!r}, not an [image path, caption] pair")
                yield pair[0], pair[1]
            return
        with self.pairs.open(encoding="utf-8-sig") as lines:
            for number, line in enumerate(lines, start=1):
                line = line.rstrip("\r\n")
                if (number == 1 and self.skip_header) or not line.strip():
                    continue
                path, tab, caption = line.partition("\t")
                if not tab:
                    raise ValueError(
                        f"{self.pairs}, line {number}: no TAB between the image path and the caption"
                    )
                yield path, caption

    def _pair_records(self) -> Iterator[Record]:
        for index, (path, caption) in enumerate(self._pairs()):
            image = self.root / path
            ext = image.suffix.lower().lstrip(".") or "jpg"
            record = self._record(f"{index:09d}", caption.strip(), image, ext, {"file": path})
            if record is not None:
                yield record


def _files(folder: Path) -> list[Path]:
    """A folder's img2dataset sample files (images, captions, metadata), sorted; not its shard statistics
    (``00000_stats.json``)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.name.partition(".")[2].lower() in SAMPLE_EXTENSIONS
        and not p.name.endswith("_stats.json")
    )


def _read(part: bytes | Path) -> bytes:
    return part if isinstance(part, bytes) else Path(part).read_bytes()


def _text(data: bytes) -> str:
    """A ``.txt`` caption: UTF-8, a byte-order mark dropped; a ``ValueError`` naming the first bad byte."""
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exn:
        raise ValueError(
            f"txt caption is not UTF-8 text (byte {data[exn.start]:#04x} at position {exn.start})"
        ) from None
