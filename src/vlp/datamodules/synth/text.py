"""Text about one scene: captions and question-answer pairs, true of the scene by construction.

Every object mention is a referring expression that identifies exactly one object of the scene.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vlp.datamodules.synth.scenes import (
    COLOUR_NAMES,
    NUMBER_WORDS,
    RELATIONS,
    SHAPES,
    SIZES,
    STYLES,
    Scene,
    ShapeObject,
    _choice,
    _roughly,
    relation_holds,
)

__all__ = ["captions_for", "questions_for"]


MAX_RELATION_CAPTIONS = 3  # relation captions offered per scene (a caption list holds at most five)
_SLOTS: tuple[str, ...] = ("size", "colour", "style", "shape")
_LIST_PREFIXES: tuple[str, ...] = ("", "an image of ", "a picture showing ")
_SINGLE_TEMPLATES: tuple[str, ...] = ("there is {a}", "the image contains {a}", "{a} on a dark background")
_RELATION_TEMPLATES: tuple[str, ...] = (
    "{a} {rel} {b}",
    "the {da} is {rel_long} the {db}",
    "there is {a} {rel_long} the {db}",
)


@dataclass(frozen=True)
class _Description:
    """A partial description of an object; ``None`` slots are unspecified and match anything."""

    size: str | None = None
    colour: str | None = None
    style: str | None = None
    shape: str | None = None

    def matches(self, obj: ShapeObject) -> bool:
        return all(
            wanted is None or wanted == getattr(obj, slot)
            for slot, wanted in zip(_SLOTS, (self.size, self.colour, self.style, self.shape))
        )

    @property
    def full(self) -> bool:
        """Every slot given, as in the listings' descriptions."""
        return None not in (self.size, self.colour, self.style, self.shape)

    def phrase(self, generic: str = "shape") -> str:
        """Words in the fixed order size, colour, style, noun; ``generic`` stands in for a missing shape."""
        words = [word for word in (self.size, self.colour, self.style) if word is not None]
        return " ".join([*words, self.shape or generic])


# --------------------------------------------------------------------------------------------- captions


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(noun: str, count: int) -> str:
    return noun if count == 1 else noun + "s"


def _be(count: int) -> str:
    return "is" if count == 1 else "are"


def _join(phrases: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _describe(obj: ShapeObject, slots: Iterable[str]) -> _Description:
    return _Description(**{slot: getattr(obj, slot) for slot in slots})


_SLOT_SUBSETS: tuple[tuple[str, ...], ...] = tuple(
    subset for count in range(len(_SLOTS) + 1) for subset in itertools.combinations(_SLOTS, count)
)


class _Referents:
    """Which subsets of attribute slots single out each object of a scene (a referring expression).

    Built once per scene, since captions and questions ask for many referring expressions.
    """

    def __init__(self, objects: tuple[ShapeObject, ...]) -> None:
        self.objects = objects
        self.full_mentions = [_with_article(_describe(obj, _SLOTS).phrase()) for obj in objects]
        keys = [[tuple(getattr(obj, slot) for slot in subset) for obj in objects] for subset in _SLOT_SUBSETS]
        self._subsets = [
            [subset for subset, values in zip(_SLOT_SUBSETS, keys) if values.count(values[index]) == 1]
            for index in range(len(objects))
        ]

    def slots(self, index: int, exclude: str | None = None, min_slots: int = 0) -> list[tuple[str, ...]]:
        """Identifying subsets of object ``index`` without ``exclude`` and with at least ``min_slots`` slots."""
        return [
            subset
            for subset in self._subsets[index]
            if len(subset) >= min_slots and (exclude is None or exclude not in subset)
        ]

    def describe(self, rng: np.random.Generator, index: int, min_slots: int = 0) -> _Description:
        """A random description that matches object ``index`` and no other."""
        return _describe(self.objects[index], _choice(rng, self.slots(index, min_slots=min_slots)))


def _list_objects(referents: _Referents, rng: np.random.Generator) -> str:
    """Full descriptions of all objects in random order: "a small red filled circle and a ..."."""
    order = rng.permutation(len(referents.objects))
    return _join([referents.full_mentions[i] for i in order])


def _exact_count(count: int, noun: str) -> str:
    return f"there {_be(count)} exactly {NUMBER_WORDS[count]} {_plural(noun, count)}"


def _listing_captions(referents: _Referents, rng: np.random.Generator) -> list[str]:
    return [prefix + _list_objects(referents, rng) for prefix in _LIST_PREFIXES]


def _counting_captions(referents: _Referents, rng: np.random.Generator) -> list[str]:
    objects = referents.objects
    total = len(objects)
    colour = _choice(rng, [obj.colour for obj in objects])
    shape = _choice(rng, [obj.shape for obj in objects])
    return [
        f"{NUMBER_WORDS[total]} {_plural('shape', total)}: {_list_objects(referents, rng)}",
        _exact_count(total, "shape"),
        _exact_count(sum(obj.colour == colour for obj in objects), f"{colour} shape"),
        _exact_count(sum(obj.shape == shape for obj in objects), shape),
    ]


def _single_captions(referents: _Referents, rng: np.random.Generator) -> list[str]:
    captions = []
    for template in _SINGLE_TEMPLATES:
        index = int(rng.random() * len(referents.objects))
        description = referents.describe(rng, index, min_slots=1)
        captions.append(template.format(a=_with_article(description.phrase())))
    return captions


def _relation_captions(referents: _Referents, rng: np.random.Generator, resolution: int) -> list[str]:
    """Captions for up to :data:`MAX_RELATION_CAPTIONS` random pairs of objects in a clear relation."""
    objects = referents.objects
    facts = [
        (subject, anchor, relation)
        for subject, anchor in itertools.permutations(range(len(objects)), 2)
        for relation in RELATIONS
        if relation_holds(objects[subject], objects[anchor], relation, resolution)
    ]
    captions = []
    for index in rng.permutation(len(facts))[:MAX_RELATION_CAPTIONS]:
        subject, anchor, relation = facts[index]
        first = referents.describe(rng, subject).phrase()
        second = referents.describe(rng, anchor).phrase()
        template = _choice(rng, _RELATION_TEMPLATES)
        captions.append(
            template.format(
                a=_with_article(first),
                b=_with_article(second),
                da=first,
                db=second,
                rel=relation,
                rel_long=RELATIONS[relation],
            )
        )
    return captions


def captions_for(scene: Scene, rng: np.random.Generator, resolution: int) -> list[str]:
    """Three to five distinct captions, true of the scene, one of which lists every object.

    Families: listings ("an image of a small red filled circle and ..."), counts ("there are exactly two red
    shapes"), single objects ("there is a blue square") and relations ("a red circle left of a blue
    square"). Every object mention identifies exactly one object.
    """
    if not scene.objects:
        raise ValueError("cannot caption a scene without objects")
    referents = _Referents(scene.objects)
    listings = _listing_captions(referents, rng)
    pools = [
        _counting_captions(referents, rng),
        _single_captions(referents, rng),
        _relation_captions(referents, rng, resolution),
    ]
    wanted = int(rng.integers(3, 6))
    chosen = [_choice(rng, listings)]
    pools.append([caption for caption in listings if caption not in chosen])
    while len(chosen) < wanted and any(pools):
        pool = _choice(rng, [pool for pool in pools if pool])
        caption = pool.pop(int(rng.integers(len(pool))))
        if caption not in chosen:
            chosen.append(caption)
    return [chosen[i] for i in rng.permutation(len(chosen))]


# --------------------------------------------------------------------------------------------------- QA

QA = tuple[str, str]
_ATTRIBUTE_QUESTIONS: dict[str, str] = {
    "colour": "what colour is the {}?",
    "shape": "what shape is the {}?",
    "size": "what size is the {}?",
    "style": "is the {} filled or outlined?",
}
# Probability that a randomly drawn description specifies each slot (existence questions, pair statements).
_SLOT_PROBABILITIES: dict[str, float] = {"size": 0.3, "colour": 0.7, "style": 0.3, "shape": 0.8}
_VALUES: dict[str, tuple[str, ...]] = {
    "size": SIZES,
    "colour": COLOUR_NAMES,
    "style": STYLES,
    "shape": SHAPES,
}


def _attribute_question(referents: _Referents, rng: np.random.Generator, slot: str) -> QA | None:
    """Ask for one attribute of an object named uniquely without that attribute."""
    options = [
        (obj, subset)
        for index, obj in enumerate(referents.objects)
        for subset in referents.slots(index, exclude=slot)
    ]
    if not options:
        return None
    obj, subset = _choice(rng, options)
    generic = "object" if slot == "shape" else "shape"
    return _ATTRIBUTE_QUESTIONS[slot].format(_describe(obj, subset).phrase(generic)), getattr(obj, slot)


def _total_count_question(scene: Scene) -> QA:
    return "how many shapes are there?", NUMBER_WORDS[len(scene.objects)]


def _colour_count_question(scene: Scene, rng: np.random.Generator) -> QA:
    present = [obj.colour for obj in scene.objects]
    colour = _choice(rng, present if rng.random() < 0.5 else COLOUR_NAMES)
    return f"how many {colour} shapes are there?", NUMBER_WORDS[present.count(colour)]


def _shape_count_question(scene: Scene, rng: np.random.Generator) -> QA:
    present = [obj.shape for obj in scene.objects]
    shape = _choice(rng, present if rng.random() < 0.5 else SHAPES)
    return f"how many {shape}s are there?", NUMBER_WORDS[present.count(shape)]


def _random_slots(rng: np.random.Generator) -> list[str]:
    slots = [slot for slot in _SLOTS if rng.random() < _SLOT_PROBABILITIES[slot]]
    return slots or ["shape"]


def _random_description(rng: np.random.Generator) -> _Description:
    return _Description(**{slot: _choice(rng, _VALUES[slot]) for slot in _random_slots(rng)})


def _existence_question(scene: Scene, rng: np.random.Generator) -> QA | None:
    """ "is there a ...?" answered "yes" or "no" with equal probability (None if no absent description is found)."""
    if rng.random() < 0.5:
        description = _describe(_choice(rng, scene.objects), _random_slots(rng))
        return f"is there {_with_article(description.phrase())}?", "yes"
    for _ in range(32):
        description = _random_description(rng)
        if not any(description.matches(obj) for obj in scene.objects):
            return f"is there {_with_article(description.phrase())}?", "no"
    return None


def _relation_question(referents: _Referents, rng: np.random.Generator, resolution: int) -> QA | None:
    """ "what is left of the red circle?", asked only when one object lies on that side, and clearly so."""
    objects = referents.objects
    options = []
    for anchor, anchor_obj in enumerate(objects):
        for relation in RELATIONS:
            near = [obj for obj in objects if obj != anchor_obj and _roughly(obj, anchor_obj, relation)]
            if len(near) == 1 and relation_holds(near[0], anchor_obj, relation, resolution):
                options.append((anchor, relation, near[0]))
    if not options:
        return None
    anchor, relation, subject = _choice(rng, options)
    description = referents.describe(rng, anchor)
    return f"what is {RELATIONS[relation]} the {description.phrase()}?", subject.shape


def questions_for(scene: Scene, rng: np.random.Generator, resolution: int) -> list[dict[str, object]]:
    """Four to eight distinct questions about the scene, ``{"question": str, "answers": [str]}`` each.

    Kinds: colour, shape, size and style of a uniquely described object; counts (all shapes, by colour, by
    shape; answered "zero" ... "four"); yes/no existence (balanced); which shape lies in a direction.
    """
    if not scene.objects:
        raise ValueError("cannot ask about a scene without objects")
    referents = _Referents(scene.objects)
    candidates = [
        *(_attribute_question(referents, rng, slot) for slot in _ATTRIBUTE_QUESTIONS),
        _total_count_question(scene),
        _colour_count_question(scene, rng),
        _shape_count_question(scene, rng),
        *(_existence_question(scene, rng) for _ in range(3)),
        _relation_question(referents, rng, resolution),
    ]
    pool = list(dict(qa for qa in candidates if qa is not None).items())
    order = rng.permutation(len(pool))[: int(rng.integers(4, 9))]
    return [{"question": pool[i][0], "answers": [pool[i][1]]} for i in order]
