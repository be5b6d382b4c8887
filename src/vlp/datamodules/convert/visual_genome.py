"""Visual Genome: region descriptions as captions, objects with attributes, and question-answer pairs.

The raw folder is the published download, unzipped::

    image_data.json              [{"image_id" (or "id"), "url", "width", "height", "coco_id", "flickr_id"}]
    objects.json                 [{"image_id", "objects": [{"object_id", "x", "y", "w", "h", "names": [..]}]}]
    attributes.json              [{"image_id", "attributes": [{"object_id", "attributes": [..], ...}]}]
    region_descriptions.json     [{"id" (or "image_id"), "regions": [{"phrase", "x", "y", "width", ...}]}]
    question_answers.json        [{"id", "qas": [{"qa_id", "question", "answer", ...}]}]
    VG_100K/<image_id>.jpg, VG_100K_2/<image_id>.jpg

Every annotation file is a list with one entry per image, in ``image_data.json``'s order (as published).
The files are read in lock-step, one image at a time, with a streaming reader of JSON lists
(:func:`iter_json_array`), so memory holds one image's annotations per file, not the gigabytes of the
whole files; an entry whose image id is not the one ``image_data.json`` has at that position stops the
conversion with a message naming both (files of different releases).

One sample per image, in the ``train`` split (Visual Genome has no official split; ViLT pre-trains on all
of it). Its json (:mod:`~vlp.datamodules.convert.base`'s schema):

* ``captions``: the region phrases, whitespace collapsed, exact repeats dropped, in file order (at most
  ``max_captions``);
* ``objects``: ``bbox`` ``[x, y, w, h]`` in pixels clipped to the image (a box with no area left is
  dropped and listed), ``category`` the first of the object's names and ``attributes`` those of
  ``attributes.json`` for its id (or an id merged into it, ``merged_object_ids`` of v1.4), both
  normalised (:func:`normalise_name`);
* ``qa``: ``{"question", "answers": [the one answer], "qa_id"}`` (Visual Genome has one answer per
  question);
* ``source``: ``dataset``, ``image_id`` and, when the image has them, ``coco_id`` and ``flickr_id``.

A part's key is present whenever the part is converted, empty when the image has none; an image with
nothing in any converted part is dropped. E2E-VLP's detection classifies over bottom-up attention's 1600
object / 400 attribute vocabulary: given its ``objects_vocab.txt`` / ``attributes_vocab.txt``, objects
whose category is not in it are dropped and attributes not in it removed (both counted per name in
:meth:`~VisualGenomeConverter.dropped`), and ``vocab.json`` lists the file's names in its order. ViLT
leaves out the images of COCO's validation and test sets: ``exclude_coco_ids`` names a file of COCO ids
whose Visual Genome images are dropped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from vlp.datamodules.convert.base import DatasetConverter, Record

__all__ = ["VisualGenomeConverter", "iter_json_array", "normalise_name", "read_name_vocab"]

IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")
PART_FILES = {"captions": "region_descriptions.json", "qa": "question_answers.json"}
OBJECT_FILES = ("objects.json", "attributes.json")
MAX_ENTRY_CHARS = 1 << 28
"""The largest list entry :func:`iter_json_array` reads (Visual Genome's are kilobytes): past it the file is
taken as malformed rather than read whole into memory."""

_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _ListReader:
    """A text file read in chunks, with the position of the next character to parse."""

    def __init__(self, file: IO[str], chunk_chars: int) -> None:
        self.file = file
        self.chunk_chars = chunk_chars
        self.text = ""
        self.pos = 0
        self.decoder = json.JSONDecoder()

    def more(self) -> bool:
        """Append the next chunk (at least as long as what is still unparsed, so one long entry is read in
        a few rounds); ``False`` at the end of the file."""
        unparsed = len(self.text) - self.pos
        if unparsed > MAX_ENTRY_CHARS:
            raise ValueError(f"an entry longer than {MAX_ENTRY_CHARS} characters (or malformed JSON)")
        data = self.file.read(max(self.chunk_chars, unparsed))
        if not data:
            return False
        self.text = self.text[self.pos :] + data
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace; empty at the end of the file."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def value(self) -> Any:
        """The JSON value starting at the next character that is not whitespace; ``json.JSONDecodeError``
        when it is malformed."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if self.more():
                    continue
                raise
            # A value that reaches the end of the text may go on in the next chunk (a number cut short).
            if end == len(self.text) and self.more():
                continue
            self.pos = end
            return value


def iter_json_array(path: Path, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """The entries of the JSON list in ``path``, one at a time: memory holds one chunk and one entry, not
    the file. A ``ValueError`` naming the file and the entry when it is not a well-formed list."""
    with path.open(encoding="utf-8-sig") as file:
        reader = _ListReader(file, chunk_chars)
        try:
            if reader.peek() != "[":
                raise ValueError("it is not a JSON list")
            reader.pos += 1
            if reader.peek() == "]":
                return
            index = 0
            while True:
                try:
                    entry = reader.value()
                except json.JSONDecodeError as exn:
                    raise ValueError(f"entry {index} is not valid JSON ({exn.msg})") from None
                yield entry
                found = reader.peek()
                reader.pos += 1
                if found == "]":
                    return
                if found != ",":
                    raise ValueError(
                        f"after entry {index}: expected ',' or ']', found {found or 'the end'!r}"
                    )
                index += 1
        except ValueError as exn:
            raise ValueError(f"{path}: {exn}") from None


def normalise_name(name: str) -> str:
    """An object or attribute name as it is matched and stored: lower case, whitespace collapsed, a
    trailing period dropped (bottom-up attention's cleaning of Visual Genome's names)."""
    return " ".join(name.lower().split()).removesuffix(".").strip()


@dataclass
class NameVocab:
    """A vocabulary file's names in order and every name (synonyms too) -> the name it stands for."""

    path: Path
    names: list[str] = field(default_factory=list)
    lookup: dict[str, str] = field(default_factory=dict)


def read_name_vocab(path: Path) -> NameVocab:
    """Bottom-up attention's vocabulary file: one class a line, comma-separated synonyms after its name
    (``car,cars``); names normalised, a repeated class kept once."""
    vocab = NameVocab(path)
    synonyms: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        names = [name for name in (normalise_name(n) for n in line.split(",")) if name]
        if not names or names[0] in vocab.lookup:
            continue
        vocab.names.append(names[0])
        vocab.lookup[names[0]] = names[0]
        for name in names[1:]:
            synonyms.setdefault(name, names[0])
    if not vocab.names:
        raise ValueError(f"{path} lists no names (expected one per line, as objects_vocab.txt)")
    vocab.lookup = {**synonyms, **vocab.lookup}  # a class name is itself even where another lists it
    return vocab


def read_coco_ids(path: Path) -> set[int]:
    """COCO image ids, the last field of each line: a bare id, or bottom-up attention's
    ``val2014/COCO_val2014_000000011169.jpg 11169``; blank lines and ``#`` comments skipped."""
    ids: set[int] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        last = text.split()[-1]
        if not last.isdigit():
            raise ValueError(
                f"{path}:{number}: {line.strip()!r} does not end with a COCO image id; write one id a line "
                "(or 'file id' lines, as bottom-up attention's karpathy_val_images.txt)"
            )
        ids.add(int(last))
    return ids


def _entry_image_id(entry: dict[str, Any], items: str | None) -> Any:
    """The image id of a per-image entry: ``image_id`` or ``id`` (the key differs between releases and
    files), else that of its first item; ``None`` when it carries none."""
    for key in ("image_id", "id"):
        if key in entry:
            return entry[key]
    inner = entry.get(items) if items else None
    if isinstance(inner, list) and inner and isinstance(inner[0], dict):
        return inner[0].get("image_id")
    return None


class _PerImage:
    """One annotation file's entries, taken one per image in ``image_data.json``'s order."""

    def __init__(self, path: Path, items: str) -> None:
        self.path = path
        self.items = items
        self.entries = iter_json_array(path)
        self.index = 0

    def take(self, image_id: int) -> list[Any]:
        """The item list (``items``) of the next entry, which must be image ``image_id``'s."""
        entry = next(self.entries, None)
        if entry is None:
            raise ValueError(
                f"{self.path} ends after {self.index} images, but image_data.json has more (image "
                f"{image_id} next): use the annotation files of one Visual Genome release"
            )
        if not isinstance(entry, dict):
            raise ValueError(f"{self.path}: entry {self.index} is a {type(entry).__name__}, not an object")
        found = _entry_image_id(entry, self.items)
        if found is not None and found != image_id:
            raise ValueError(
                f"{self.path}: entry {self.index} is image {found!r}, where image_data.json has image "
                f"{image_id}: the files must list the images in image_data.json's order, as published "
                "(use the annotation files of one release)"
            )
        self.index += 1
        items = entry.get(self.items) or []
        if not isinstance(items, list):
            raise ValueError(
                f"{self.path}: entry {self.index - 1} (image {image_id}): {self.items!r} is not a list"
            )
        return items

    def finish(self) -> None:
        """Check that the file has no entry past the last image of ``image_data.json``."""
        if next(self.entries, None) is not None:
            raise ValueError(
                f"{self.path} has more entries than image_data.json's {self.index} images: use the "
                "annotation files of one Visual Genome release"
            )


def _user_path(path: Path | str | None) -> Path | None:
    return None if path is None else Path(path).expanduser()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _text(value: Any) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


class VisualGenomeConverter(DatasetConverter):
    """Visual Genome's published download -> one ``train`` split of samples, one per image.

    Args:
        captions: convert the region descriptions into ``captions``.
        objects: convert the objects (with their attributes) into ``objects``.
        qa: convert the question-answer pairs into ``qa``.
        max_captions: keep at most this many region phrases per image (the first in file order); ``None``
            keeps all (about 50 per image).
        object_vocab: bottom-up attention's ``objects_vocab.txt`` (one class a line, synonyms after commas):
            objects whose category is not in it are dropped, and ``vocab.json``'s ``categories`` are its
            names in order. ``None``: every category is kept, ``categories`` lists those seen, sorted.
        attribute_vocab: likewise ``attributes_vocab.txt`` for the attributes (one not in it is removed
            from its object).
        exclude_coco_ids: a file of COCO image ids (one a line, the id the last field) whose Visual Genome
            images are left out (ViLT leaves out COCO's validation and test images).
    """

    name: ClassVar[str] = "visual-genome"

    def __init__(
        self,
        root: Path,
        *,
        captions: bool = True,
        objects: bool = True,
        qa: bool = True,
        max_captions: int | None = None,
        object_vocab: Path | None = None,
        attribute_vocab: Path | None = None,
        exclude_coco_ids: Path | None = None,
    ) -> None:
        if not (captions or objects or qa):
            raise ValueError(
                "visual-genome: every part is off; convert at least one of captions, objects, qa"
            )
        if max_captions is not None and max_captions < 1:
            raise ValueError(
                f"visual-genome: max_captions must be at least 1 (or None for all), got {max_captions}"
            )
        if (object_vocab is not None or attribute_vocab is not None) and not objects:
            raise ValueError(
                "visual-genome: object_vocab / attribute_vocab filter objects, but objects=False"
            )
        super().__init__(
            root,
            captions=captions,
            objects=objects,
            qa=qa,
            max_captions=max_captions,
            object_vocab=object_vocab,
            attribute_vocab=attribute_vocab,
            exclude_coco_ids=exclude_coco_ids,
        )
        self.parts = {"captions": captions, "objects": objects, "qa": qa}
        self.max_captions = max_captions
        self.object_vocab_path = _user_path(object_vocab)
        self.attribute_vocab_path = _user_path(attribute_vocab)
        self.exclude_path = _user_path(exclude_coco_ids)
        self._state = _State()
        self._read = False

    def _annotation_paths(self) -> list[Path]:
        names = ["image_data.json"]
        if self.parts["objects"]:
            names += OBJECT_FILES
        names += [file for part, file in PART_FILES.items() if self.parts[part]]
        return [self.root / name for name in names]

    def _option_files(self) -> list[Path]:
        paths = (self.object_vocab_path, self.attribute_vocab_path, self.exclude_path)
        return [path for path in paths if path is not None]

    def required(self) -> list[Path]:
        return [
            *self._annotation_paths(),
            *(self.root / folder for folder in IMAGE_FOLDERS),
            *self._option_files(),
        ]

    def annotation_files(self) -> list[Path]:
        return [*self._annotation_paths(), *self._option_files()]

    def splits(self) -> list[str]:
        return ["train"]

    def layout(self) -> str:
        return "\n".join(
            [
                "image_data.json",
                "objects.json, attributes.json        (with objects)",
                "region_descriptions.json             (with captions)",
                "question_answers.json                (with qa)",
                "VG_100K/<image_id>.jpg",
                "VG_100K_2/<image_id>.jpg",
            ]
        )

    def records(self, split: str) -> Iterator[Record]:
        if split != "train":
            raise ValueError(f"visual-genome has one split, 'train'; got {split!r}")
        self._state = state = _State()
        self._read = False
        objects_vocab = read_name_vocab(self.object_vocab_path) if self.object_vocab_path else None
        attributes_vocab = read_name_vocab(self.attribute_vocab_path) if self.attribute_vocab_path else None
        excluded = read_coco_ids(self.exclude_path) if self.exclude_path else set()
        files = self._per_image_files()
        for index, image in enumerate(iter_json_array(self.root / "image_data.json")):
            image_id = _image_id(image, index, self.root / "image_data.json")
            annotations = {part: file.take(image_id) for part, file in files.items()}
            record = self._record(
                image, image_id, annotations, excluded, objects_vocab, attributes_vocab, state
            )
            if record is not None:
                yield record
        for file in files.values():
            file.finish()
        self._read = True

    def _per_image_files(self) -> dict[str, _PerImage]:
        files: dict[str, _PerImage] = {}
        if self.parts["captions"]:
            files["captions"] = _PerImage(self.root / "region_descriptions.json", "regions")
        if self.parts["objects"]:
            files["objects"] = _PerImage(self.root / "objects.json", "objects")
            files["attributes"] = _PerImage(self.root / "attributes.json", "attributes")
        if self.parts["qa"]:
            files["qa"] = _PerImage(self.root / "question_answers.json", "qas")
        return files

    def _record(
        self,
        image: dict[str, Any],
        image_id: int,
        annotations: dict[str, list[Any]],
        excluded: set[int],
        objects_vocab: NameVocab | None,
        attributes_vocab: NameVocab | None,
        state: _State,
    ) -> Record | None:
        """The image's record, or ``None`` with the reason added to the dropped list."""
        key = str(image_id)
        coco_id = image.get("coco_id")
        if coco_id is not None and coco_id in excluded:
            state.dropped.append((key, f"coco_id {coco_id} is in exclude_coco_ids ({self.exclude_path})"))
            return None
        image_file = self._image_file(image, image_id)
        if image_file is None:
            folders = " or ".join(f"{folder}/{image_id}.jpg" for folder in IMAGE_FOLDERS)
            state.dropped.append((key, f"no image file ({folders})"))
            return None
        sample: dict[str, Any] = {"source": _source(image, image_id)}
        if self.parts["captions"]:
            sample["captions"] = self._captions(annotations["captions"])
        if self.parts["objects"]:
            size = _image_size(image)
            if size is None:
                state.dropped.append(
                    (key, f"image_data.json gives no usable width/height for image {image_id}")
                )
                return None
            sample["objects"] = _objects(
                key,
                annotations["objects"],
                annotations["attributes"],
                size,
                objects_vocab,
                attributes_vocab,
                state,
            )
        if self.parts["qa"]:
            sample["qa"] = _questions(annotations["qa"])
        if not any(sample[part] for part, on in self.parts.items() if on):
            wanted = ", ".join(part for part, on in self.parts.items() if on)
            state.dropped.append((key, f"no usable annotation (none of: {wanted})"))
            return None
        return Record(key=key, json=sample, images={"jpg": image_file})

    def _image_file(self, image: dict[str, Any], image_id: int) -> Path | None:
        """``VG_100K/<id>.jpg`` or ``VG_100K_2/<id>.jpg``, the url's folder looked at first."""
        url = image.get("url")
        named = url.rsplit("/", 2)[-2] if isinstance(url, str) and url.count("/") >= 2 else ""
        folders = sorted(IMAGE_FOLDERS, key=lambda folder: folder != named)
        return next(
            (
                path
                for path in (self.root / folder / f"{image_id}.jpg" for folder in folders)
                if path.is_file()
            ),
            None,
        )

    def _captions(self, regions: list[Any]) -> list[str]:
        phrases = [_text(region.get("phrase")) for region in regions if isinstance(region, dict)]
        captions = list(dict.fromkeys(phrase for phrase in phrases if phrase))
        return captions if self.max_captions is None else captions[: self.max_captions]

    def dropped(self) -> list[tuple[str, str]]:
        state = self._state
        entries = list(state.dropped)
        if self.object_vocab_path is not None:
            entries += [
                (
                    f"category {name!r}",
                    f"not in object_vocab ({self.object_vocab_path}): {count} object(s) dropped",
                )
                for name, count in _by_count(state.outside_categories)
            ]
        if self.attribute_vocab_path is not None:
            entries += [
                (
                    f"attribute {name!r}",
                    f"not in attribute_vocab ({self.attribute_vocab_path}): removed from {count} object(s)",
                )
                for name, count in _by_count(state.outside_attributes)
            ]
        return entries

    def vocab(self) -> dict[str, Any] | None:
        """``categories`` and ``attributes`` (the vocabulary files' names in order, else those seen, sorted);
        ``None`` without objects. Reads the records first when they have not been read."""
        if not self.parts["objects"]:
            return None
        if not self._read:
            for _ in self.records("train"):
                pass
        categories = (
            read_name_vocab(self.object_vocab_path).names
            if self.object_vocab_path
            else sorted(self._state.categories)
        )
        attributes = (
            read_name_vocab(self.attribute_vocab_path).names
            if self.attribute_vocab_path
            else sorted(self._state.attributes)
        )
        return {"categories": categories, "attributes": attributes}


@dataclass
class _State:
    """What one read of the records found: dropped samples and objects, names seen and names filtered."""

    dropped: list[tuple[str, str]] = field(default_factory=list)
    categories: set[str] = field(default_factory=set)
    attributes: set[str] = field(default_factory=set)
    outside_categories: Counter[str] = field(default_factory=Counter)
    outside_attributes: Counter[str] = field(default_factory=Counter)


def _by_count(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _image_id(image: Any, index: int, path: Path) -> int:
    if isinstance(image, dict):
        for key in ("image_id", "id"):
            if isinstance(image.get(key), int):
                return image[key]
    raise ValueError(f"{path}: entry {index} has no integer 'image_id' (or 'id'): {str(image)[:200]}")


def _image_size(image: dict[str, Any]) -> tuple[int, int] | None:
    """``(width, height)`` from ``image_data.json``; ``None`` when either is missing or not positive."""
    width, height = image.get("width"), image.get("height")
    if _number(width) and _number(height) and width > 0 and height > 0:
        return width, height
    return None


def _source(image: dict[str, Any], image_id: int) -> dict[str, Any]:
    source: dict[str, Any] = {"dataset": "visual-genome", "image_id": image_id}
    for key in ("coco_id", "flickr_id"):
        if image.get(key) is not None:
            source[key] = image[key]
    return source


def _object_attributes(attributes: list[Any]) -> dict[Any, list[str]]:
    """Object id -> its normalised attributes, merged over every entry of ``attributes.json`` for it."""
    merged: dict[Any, list[str]] = {}
    for entry in attributes:
        if not isinstance(entry, dict):
            continue
        object_id = entry.get("object_id", entry.get("id"))
        names = entry.get("attributes") or []
        found = merged.setdefault(object_id, [])
        for name in names if isinstance(names, list) else []:
            if isinstance(name, str) and normalise_name(name) and normalise_name(name) not in found:
                found.append(normalise_name(name))
    return merged


def _first_name(obj: dict[str, Any]) -> str:
    """The object's first name, normalised: ``names[0]``, or ``name`` in older releases."""
    names = obj.get("names")
    if names is None:
        names = obj.get("name")
    first = names[0] if isinstance(names, list) and names else names
    return normalise_name(first) if isinstance(first, str) else ""


def _clipped_box(obj: dict[str, Any], size: tuple[int, int]) -> list[float] | None:
    """``[x, y, w, h]`` clipped to the image; ``None`` when not four numbers or no area is left."""
    values = [obj.get(key) for key in ("x", "y", "w", "h")]
    if not all(_number(value) for value in values):
        return None
    x, y, w, h = values
    width, height = size
    x0, y0 = min(max(x, 0), width), min(max(y, 0), height)
    x1, y1 = min(max(x + w, 0), width), min(max(y + h, 0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def _objects(
    key: str,
    objects: list[Any],
    attributes: list[Any],
    size: tuple[int, int],
    objects_vocab: NameVocab | None,
    attributes_vocab: NameVocab | None,
    state: _State,
) -> list[dict[str, Any]]:
    """The image's objects in the sample schema; dropped ones are added to ``state``."""
    by_id = _object_attributes(attributes)
    found: list[dict[str, Any]] = []
    for index, obj in enumerate(objects):
        if not isinstance(obj, dict):
            state.dropped.append((f"{key}/objects[{index}]", "not an object"))
            continue
        object_id = obj.get("object_id", obj.get("id"))
        label = f"{key}/{object_id}"
        category = _first_name(obj)
        if not category:
            state.dropped.append((label, "object without a name"))
            continue
        box = _clipped_box(obj, size)
        if box is None:
            bbox = [obj.get(k) for k in ("x", "y", "w", "h")]
            width, height = size
            state.dropped.append((label, f"bbox {bbox} has no area inside the {width}x{height} image"))
            continue
        if objects_vocab is not None:
            if category not in objects_vocab.lookup:
                state.outside_categories[category] += 1
                continue
            category = objects_vocab.lookup[category]
        ids = [object_id, *(obj.get("merged_object_ids") or [])]
        names = list(dict.fromkeys(name for i in ids for name in by_id.get(i, [])))
        if attributes_vocab is not None:
            state.outside_attributes.update(name for name in names if name not in attributes_vocab.lookup)
            names = list(
                dict.fromkeys(attributes_vocab.lookup[n] for n in names if n in attributes_vocab.lookup)
            )
        state.categories.add(category)
        state.attributes.update(names)
        found.append({"bbox": box, "category": category, "attributes": names})
    return found


def _questions(qas: list[Any]) -> list[dict[str, Any]]:
    """``{"question", "answers": [answer], "qa_id"}`` of each pair with a question and an answer."""
    found = []
    for qa in qas:
        if not isinstance(qa, dict):
            continue
        question, answer = _text(qa.get("question")), _text(qa.get("answer"))
        if question and answer:
            entry: dict[str, Any] = {"question": question, "answers": [answer]}
            if qa.get("qa_id") is not None:
                entry["qa_id"] = qa["qa_id"]
            found.append(entry)
    return found
