"""One-change edits of shapes captions: the hard ITM negatives of a scene's own image.

:class:`ShapesCaptionEditor` swaps one word of a caption of the shapes grammar (:mod:`.text`) for another
of its kind: a colour, a shape (its plural kept), a size, a style, a side of a relation ("left of" and
"right of", "above" and "below"), or the number of a count caption ("there are exactly two red shapes"
to three or four). Whether an edit is false of the image is the collator's question
(:class:`~vlp.datamodules.synth.truth.ShapesCaptionCheck`): "there is a red circle" edited to "there is a
blue circle" is still true of a scene with a blue circle.

Edits that the generator could never write are left out, so the text alone does not give a negative
away: an edit that names the same description twice ("a red circle left of a red circle", a listing
with two equal objects), and a number edit across "one" and the plural ("there is exactly one" has no
grammatical "two"), or of a listing's count prefix ("two shapes: a X, a Y and a Z" would then disagree
with its own list).
"""

from __future__ import annotations

import re
from collections import Counter

from vlp.datamodules.parts import CaptionEditor
from vlp.datamodules.synth.scenes import COLOUR_NAMES, NUMBER_WORDS, SHAPES, SIZES, STYLES
from vlp.datamodules.synth.truth import _DESCRIPTION_RE

__all__ = ["ShapesCaptionEditor"]

_SIDES = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_COUNT = re.compile(r"(there are exactly )(\w+) ")
_WORD = re.compile(r"[a-z]+")


def _word_kinds() -> dict[str, tuple[str, ...]]:
    kinds: dict[str, tuple[str, ...]] = {}
    for words in (COLOUR_NAMES, SIZES, STYLES, SHAPES):
        for word in words:
            kinds[word] = words
    for shape in SHAPES:
        kinds[shape + "s"] = tuple(s + "s" for s in SHAPES)
    return kinds


_KINDS = _word_kinds()
_PLURAL_NUMBERS = tuple(n for n in NUMBER_WORDS if n not in ("zero", "one"))


def _names_a_description_twice(caption: str) -> bool:
    phrases = [m.group(0) for m in _DESCRIPTION_RE.finditer(caption)]
    return any(count > 1 for count in Counter(phrases).values())


class ShapesCaptionEditor(CaptionEditor):
    """The one-word edits of a shapes caption (module docstring), in the order the words appear."""

    def edits(self, caption: str) -> list[str]:
        text = caption.strip().lower()
        found: list[str] = []
        for match in _WORD.finditer(text):
            for other in _KINDS.get(match.group(0), ()):
                if other != match.group(0):
                    found.append(text[: match.start()] + other + text[match.end() :])
        for side, opposite in _SIDES.items():
            for match in re.finditer(rf"\b{side}\b", text):
                found.append(text[: match.start()] + opposite + text[match.end() :])
        count = _COUNT.match(text)
        if count is not None and count.group(2) in _PLURAL_NUMBERS:
            for other in _PLURAL_NUMBERS[:3]:  # two to four: a scene holds at most four objects
                if other != count.group(2):
                    found.append(count.group(1) + other + text[count.end(2) :])
        return [edit for edit in dict.fromkeys(found) if not _names_a_description_twice(edit)]
