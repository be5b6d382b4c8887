"""Whether a shapes caption is true of a scene: the check that keeps false negatives out of ITM.

Image-text matching pairs a caption with another sample's image and calls the pair a mismatch. On the
shapes data that label is wrong for 7.7 % of random pairs: "there is a blue shape" is true of many
scenes. :class:`ShapesCaptionCheck` reads a caption of the shapes grammar (:mod:`.text`) and the
objects of another sample's json, so the collator can draw a different image for such a negative.

A caption holds of a scene when everything it states is true of it:

- a listing ("an image of a small red filled circle and a large ...") states that each listed object is
  present; with a count prefix ("two shapes: ...") also how many objects there are;
- a count ("there are exactly two red shapes") states how many objects fit the description;
- a single mention ("there is a blue square") states that one fits;
- a relation ("a red circle left of a blue square") states that one object fits each description with
  the first on that side of the second, read loosely (centre beyond centre along the axis). The
  generator only states clear relations (:func:`~vlp.datamodules.synth.scenes.relation_holds`); the loose
  reading also counts a borderline arrangement as true, so such an image is never used as a mismatch.

Definite articles ("the red circle") are read as existence: uniqueness is not checked, for the same
reason (a scene where the statement is arguably true never serves as a negative).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from vlp.datamodules.parts import CaptionCheck
from vlp.datamodules.synth.scenes import (
    COLOUR_NAMES,
    NUMBER_WORDS,
    RELATIONS,
    SHAPES,
    SIZES,
    STYLES,
    ShapeObject,
    _roughly,
)
from vlp.datamodules.synth.text import _Description

__all__ = ["ShapesCaptionCheck", "caption_family", "caption_holds", "objects_from_json", "parse_caption"]


def _alternatives(words: Sequence[str]) -> str:
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


_ARTICLE = r"an? "
# A description: optional size, colour and style in this order, then a shape or the generic "shape".
_DESCRIPTION = (
    rf"(?:(?P<size>{_alternatives(SIZES)}) )?(?:(?P<colour>{_alternatives(COLOUR_NAMES)}) )?"
    rf"(?:(?P<style>{_alternatives(STYLES)}) )?(?P<shape>{_alternatives(SHAPES)}|shape)"
)
_DESCRIPTION_RE = re.compile(_DESCRIPTION)
_NUMBER = _alternatives(NUMBER_WORDS)
_SHORT_RELATION = _alternatives(RELATIONS)
_LONG_RELATION = _alternatives(RELATIONS.values())
_LONG_TO_SHORT = {long: short for short, long in RELATIONS.items()}
# Descriptions inside a longer pattern: any run of words; each is parsed on its own afterwards.
_PHRASE = r"[a-z ]+?"

_COUNT_LISTING = re.compile(rf"(?P<number>{_NUMBER}) shapes?: (?P<listing>.+)")
_LISTING = re.compile(r"(?:an image of |a picture showing )?(?P<listing>.+)")
_COUNT = re.compile(rf"there (?:is|are) exactly (?P<number>{_NUMBER}) (?P<noun>{_PHRASE})")
_SINGLE = (
    re.compile(rf"there is {_ARTICLE}(?P<a>{_PHRASE})"),
    re.compile(rf"the image contains {_ARTICLE}(?P<a>{_PHRASE})"),
    re.compile(rf"{_ARTICLE}(?P<a>{_PHRASE}) on a dark background"),
)
_RELATION = (
    re.compile(rf"{_ARTICLE}(?P<a>{_PHRASE}) (?P<rel>{_SHORT_RELATION}) {_ARTICLE}(?P<b>{_PHRASE})"),
    re.compile(rf"the (?P<a>{_PHRASE}) is (?P<long>{_LONG_RELATION}) the (?P<b>{_PHRASE})"),
    re.compile(rf"there is {_ARTICLE}(?P<a>{_PHRASE}) (?P<long>{_LONG_RELATION}) the (?P<b>{_PHRASE})"),
)


def _description(phrase: str, plural: bool = False) -> _Description | None:
    """The description a phrase spells, or None when it is not one (``plural``: the noun may end in s)."""
    if plural and phrase.endswith("s"):
        singular = _description(phrase[:-1])
        if singular is not None:
            return singular
    match = _DESCRIPTION_RE.fullmatch(phrase)
    if match is None:
        return None
    shape = match["shape"]
    return _Description(match["size"], match["colour"], match["style"], None if shape == "shape" else shape)


def _count(description: _Description, objects: Sequence[ShapeObject]) -> int:
    return sum(description.matches(obj) for obj in objects)


def _listing(text: str) -> list[_Description] | None:
    """The full descriptions of "a X, a Y and a Z", or None when the text is not such a listing."""
    parts = re.split(r", | and ", text)
    descriptions = []
    for part in parts:
        match = re.fullmatch(rf"{_ARTICLE}(?P<a>.+)", part)
        description = None if match is None else _description(match["a"])
        if description is None or not description.full:
            return None
        descriptions.append(description)
    return descriptions


def _all_present(descriptions: list[_Description], objects: Sequence[ShapeObject]) -> bool:
    """Whether each description fits some object. For a listing that is what it states: its full
    descriptions name distinct objects (a scene's attribute tuples are distinct)."""
    return all(_count(description, objects) >= 1 for description in descriptions)


def _relation_holds(a: _Description, b: _Description, relation: str, objects: Sequence[ShapeObject]) -> bool:
    return any(
        a.matches(subject) and b.matches(anchor) and _roughly(subject, anchor, relation)
        for subject in objects
        for anchor in objects
        if subject is not anchor
    )


Statement = Callable[[Sequence[ShapeObject]], bool]


def _read(caption: str) -> tuple[str, Statement]:
    """The family of ``caption`` (``listing``, ``count``, ``relation`` or ``single``) and what it states.

    Raises:
        ValueError: the caption is not one the shapes generator writes (naming it).
    """
    text = caption.strip().lower()
    match = _COUNT_LISTING.fullmatch(text)
    if match is not None:
        listed = _listing(match["listing"])
        if listed is not None:
            number = NUMBER_WORDS.index(match["number"])
            return "listing", lambda objects: len(objects) == number and _all_present(listed, objects)
    match = _COUNT.fullmatch(text)
    if match is not None:
        counted = _description(match["noun"], plural=True)
        if counted is not None:
            number = NUMBER_WORDS.index(match["number"])
            return "count", lambda objects: _count(counted, objects) == number
    for pattern in _RELATION:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        a, b = _description(match["a"]), _description(match["b"])
        if a is not None and b is not None:
            relation = match["rel"] if "rel" in pattern.groupindex else _LONG_TO_SHORT[match["long"]]
            return "relation", partial(_relation_holds, a, b, relation)
    for pattern in _SINGLE:
        match = pattern.fullmatch(text)
        single = None if match is None else _description(match["a"])
        if single is not None:
            return "single", partial(_all_present, [single])
    match = _LISTING.fullmatch(text)
    listed = None if match is None else _listing(match["listing"])
    if listed is not None:
        return "listing", partial(_all_present, listed)
    raise ValueError(f"not a caption of the shapes grammar: {caption!r}")


def parse_caption(caption: str) -> Statement:
    """What ``caption`` (a caption of the shapes grammar) states, as a test of a scene's objects; a
    ``ValueError`` names a caption the shapes generator does not write."""
    return _read(caption)[1]


def caption_family(caption: str) -> str:
    """``listing`` (with or without a count prefix), ``count``, ``relation`` or ``single``: the kind of
    statement a shapes caption makes (see :func:`parse_caption`)."""
    return _read(caption)[0]


def caption_holds(caption: str, objects: Sequence[ShapeObject]) -> bool:
    """Whether everything ``caption`` states is true of ``objects`` (see :func:`parse_caption`)."""
    return parse_caption(caption)(objects)


def objects_from_json(annotation: Mapping[str, Any]) -> list[ShapeObject]:
    """The objects of a shapes sample's json (``objects``: ``bbox``, ``category``, ``attributes`` as
    colour, size, style); a ``ValueError`` names the field that is missing or malformed."""
    objects = annotation.get("objects")
    if not isinstance(objects, list):
        raise ValueError("sample json has no 'objects' list (a shapes sample's objects are needed)")
    parsed = []
    for index, obj in enumerate(objects):
        try:
            colour, size, style = obj["attributes"]
            x, y, w, h = (float(v) for v in obj["bbox"])
            parsed.append(
                ShapeObject(shape=obj["category"], colour=colour, size=size, style=style, box=(x, y, w, h))
            )
        except (KeyError, TypeError, ValueError) as exn:
            raise ValueError(
                f"sample json 'objects'[{index}] is not a shapes object (bbox, category, "
                f"attributes [colour, size, style]): {exn}"
            ) from None
    return parsed


class ShapesCaptionCheck(CaptionCheck):
    """Which shapes images (their json's ``objects``) a caption of the shapes grammar is true of.

    The :class:`~vlp.datamodules.collate.PretrainCollator` part ``itm_negative_check``: a negative whose
    caption this says is true of its image is drawn again.
    """

    def __call__(self, caption: str, annotations: Sequence[Mapping[str, Any]]) -> list[bool]:
        statement = parse_caption(caption)
        return [statement(objects_from_json(annotation)) for annotation in annotations]
