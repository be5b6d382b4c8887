"""The embedded "shapes" dataset: seeded scenes of coloured shapes with captions, boxes, QA and pair statements.

Every caption, answer and pair label is derived from the scene description rather than sampled on its own,
so all text is true of its image by construction. A split is generated sequentially from one
``np.random.Generator`` seeded by a child of ``SeedSequence(config.seed)`` (one child per split, so splits
never share a random stream), and shards are written with a fixed mtime, so one config always yields
byte-identical shards.

Output layout (ordinary webdataset shards, read by the same code path as any other dataset)::

    out/{train,val,test}/shard-000000.tar            png + json {"captions", "objects", "qa"}
    out/pairs_{train,val,test}/shard-000000.tar      left.png + right.png + json {"statement", "label", ...}
    out/vocab.json                                   categories, attributes, answers, ...
    out/stats.json                                   samples and shards per split, generator config
    out/.vlp-shapes.json                             the generator's stamp: format version, config, complete

The generator only ever writes into a folder it owns (:func:`write_shapes`): a new or empty folder, or one
carrying its stamp. A folder with anything else in it is never written to or deleted, and a stamped
folder written with other settings is reported, setting by setting, rather than reused or replaced.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import math
import os
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from vlp.errors import UserError

__all__ = [
    "COLOURS",
    "COLOUR_NAMES",
    "DEFAULT_CONFIG",
    "IMAGE_SPLITS",
    "NUMBER_WORDS",
    "PAIR_SPLITS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "STAMP",
    "STYLES",
    "Background",
    "FolderState",
    "Scene",
    "ShapeObject",
    "ShapesConfig",
    "ShapesFolderError",
    "captions_for",
    "object_side",
    "outline_width",
    "pair_statement",
    "questions_for",
    "relation_holds",
    "render_scene",
    "sample_scene",
    "scene_record",
    "shapes_folder_state",
    "shapes_ready",
    "vocabulary",
    "write_shapes",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 245),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 220),
    "orange": (255, 135, 0),
    "cyan": (0, 220, 230),
    "white": (245, 245, 245),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "hexagon")
SIZES: tuple[str, ...] = ("small", "large")
STYLES: tuple[str, ...] = ("filled", "outlined")
# Short form (used as "a red circle left of a blue square") -> long form ("... is to the left of ...").
RELATIONS: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
IMAGE_SPLITS: tuple[str, ...] = ("train", "val", "test")
PAIR_SPLITS: tuple[str, ...] = ("pairs_train", "pairs_val", "pairs_test")
STAMP = ".vlp-shapes.json"
"""The generator's stamp file in a folder it wrote: the only kind of folder it replaces or completes."""
FORMAT_VERSION = 1
"""Version of what the generator writes for a config; a change of output makes old folders differ."""
GENERATOR = "vlp.datamodules.synth.shapes"

log = logging.getLogger(__name__)

MAX_OBJECTS = 4
SMALL_FRACTION = 0.18  # side of a small object / image side: 12 px at 64 px
LARGE_RATIO = 1.8
OBJECT_GAP = 2  # background pixels kept between any two object boxes
PLACEMENT_TRIES = 64
MAX_RELATION_CAPTIONS = 3  # relation captions offered per scene (a caption list holds at most five)
# Two centres must differ by this fraction of the image side along a relation's axis for it to be stated.
RELATION_MARGIN = 0.06
STAR_INNER_RADIUS = 0.45  # fatter than a geometric star so that small stars stay recognisable
BACKGROUND_LEVELS = (10, 36)  # range of the dark base grey level
TEXTURE_AMPLITUDES = (6, 11)  # range of the per-pixel noise amplitude of textured backgrounds

_SLOTS: tuple[str, ...] = ("size", "colour", "style", "shape")
_RELATION_AXES: dict[str, tuple[int, bool]] = {
    # relation -> (axis, whether the subject comes first along that axis)
    "left of": (0, True),
    "right of": (0, False),
    "above": (1, True),
    "below": (1, False),
}
_LIST_PREFIXES: tuple[str, ...] = ("", "an image of ", "a picture showing ")
_SINGLE_TEMPLATES: tuple[str, ...] = ("there is {a}", "the image contains {a}", "{a} on a dark background")
_RELATION_TEMPLATES: tuple[str, ...] = (
    "{a} {rel} {b}",
    "the {da} is {rel_long} the {db}",
    "there is {a} {rel_long} the {db}",
)
_PAIR_TRIES = 8

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ShapesConfig:
    """What :func:`write_shapes` generates; recorded in ``stats.json`` and the stamp. The defaults are the
    settings of the recipes' ``data/shapes64`` folder."""

    resolution: int = 64
    train_samples: int = 20000
    val_samples: int = 1024
    test_samples: int = 1024
    pair_train_samples: int = 4000
    pair_val_samples: int = 512
    pair_test_samples: int = 512
    samples_per_shard: int = 512
    seed: int = 0
    textured_background_prob: float = 0.3

    def __post_init__(self) -> None:
        if self.resolution < 16:
            raise ValueError(f"resolution must be at least 16 px, got {self.resolution}")
        if min(self.split_sizes().values()) < 0:
            raise ValueError(f"sample counts must be non-negative: {self.split_sizes()}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be positive, got {self.samples_per_shard}")
        if not 0.0 <= self.textured_background_prob <= 1.0:
            raise ValueError(
                f"textured_background_prob must be in [0, 1], got {self.textured_background_prob}"
            )

    def split_sizes(self) -> dict[str, int]:
        """Number of samples of every split, image splits first."""
        return {
            "train": self.train_samples,
            "val": self.val_samples,
            "test": self.test_samples,
            "pairs_train": self.pair_train_samples,
            "pairs_val": self.pair_val_samples,
            "pairs_test": self.pair_test_samples,
        }


DEFAULT_CONFIG = ShapesConfig()


@dataclass(frozen=True)
class ShapeObject:
    """One drawn shape; ``box`` is the tight ``(x, y, w, h)`` pixel box of its drawn pixels."""

    shape: str
    colour: str
    size: str
    style: str
    box: Box

    @property
    def attributes(self) -> tuple[str, str, str]:
        return (self.colour, self.size, self.style)

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return (x + w / 2, y + h / 2)

    def to_json(self) -> dict[str, Any]:
        return {"bbox": list(self.box), "category": self.shape, "attributes": list(self.attributes)}


@dataclass(frozen=True)
class Background:
    """A dark base colour, plus grey per-pixel noise of amplitude ``texture`` when it is non-zero."""

    colour: tuple[int, int, int]
    texture: int = 0


@dataclass(frozen=True)
class Scene:
    """Objects (distinct attribute tuples, pairwise separated boxes) on a background."""

    objects: tuple[ShapeObject, ...]
    background: Background


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

    def phrase(self, generic: str = "shape") -> str:
        """Words in the fixed order size, colour, style, noun; ``generic`` stands in for a missing shape."""
        words = [word for word in (self.size, self.colour, self.style) if word is not None]
        return " ".join([*words, self.shape or generic])


# ----------------------------------------------------------------------------------------------- geometry


def object_side(size: str, resolution: int) -> int:
    """Side of the square an object of ``size`` is drawn in, proportional to the image side."""
    small = max(4, round(resolution * SMALL_FRACTION))
    return small if size == "small" else round(small * LARGE_RATIO)


def outline_width(resolution: int) -> int:
    """Stroke of outlined shapes: 2 px at 64 px, growing linearly with the resolution."""
    return max(1, round(resolution / 32))


def _line_width(style: str, resolution: int) -> int:
    return outline_width(resolution) if style == "outlined" else 1


def _normalise(points: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Stretch a polygon so that it spans exactly [0, 1] along both axes (every shape fills its square)."""
    xs, ys = zip(*points)
    x0, y0, dx, dy = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return tuple(((x - x0) / dx, (y - y0) / dy) for x, y in points)


def _polar(angle_degrees: float, radius: float) -> tuple[float, float]:
    angle = math.radians(angle_degrees)
    return (radius * math.cos(angle), radius * math.sin(angle))


@functools.cache
def _unit_vertices(shape: str) -> tuple[tuple[float, float], ...]:
    if shape == "square":
        points = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "triangle":
        points = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "diamond":
        points = [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    elif shape == "star":
        points = [_polar(-90 + 36 * k, 1.0 if k % 2 == 0 else STAR_INNER_RADIUS) for k in range(10)]
    elif shape == "hexagon":
        points = [_polar(60 * k, 1.0) for k in range(6)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    return _normalise(points)


@functools.cache
def _glyph(shape: str, side: int, style: str, width: int) -> np.ndarray:
    """Read-only boolean mask of a shape drawn in a ``side`` square, cropped to its drawn pixels.

    Cropping makes object boxes tight whatever PIL's rasterisation does at the edges. There are only a few
    dozen distinct glyphs per resolution, so they are drawn once and cached.
    """
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    fill = 255 if style == "filled" else None
    if shape == "circle":
        draw.ellipse((0, 0, side - 1, side - 1), fill=fill, outline=255, width=width)
    else:
        points = [(u * (side - 1), v * (side - 1)) for u, v in _unit_vertices(shape)]
        draw.polygon(points, fill=fill, outline=255, width=width)
    mask = np.asarray(canvas) > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    cropped = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
    cropped.setflags(write=False)
    return cropped


def _object_glyph(shape: str, size: str, style: str, resolution: int) -> np.ndarray:
    return _glyph(shape, object_side(size, resolution), style, _line_width(style, resolution))


def _separated(a: Box, b: Box, gap: float) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax + aw + gap <= bx or bx + bw + gap <= ax or ay + ah + gap <= by or by + bh + gap <= ay


def relation_holds(subject: ShapeObject, anchor: ShapeObject, relation: str, resolution: int) -> bool:
    """Whether ``subject`` is unambiguously ``relation`` (a key of :data:`RELATIONS`) ``anchor``.

    Strict on purpose: the boxes must not overlap along the relation's axis, and the centres must differ
    along it by more than the margin and by at least as much as across it (so a shape far below and
    slightly to the left is "below", never "left of").
    """
    axis, subject_first = _RELATION_AXES[relation]
    first, second = (subject, anchor) if subject_first else (anchor, subject)
    gap = second.box[axis] - (first.box[axis] + first.box[axis + 2])
    along = second.centre[axis] - first.centre[axis]
    across = abs(second.centre[1 - axis] - first.centre[1 - axis])
    return gap >= 0 and along >= max(RELATION_MARGIN * resolution, across)


def _roughly(subject: ShapeObject, anchor: ShapeObject, relation: str) -> bool:
    """The loose reading of a relation: the subject's centre lies on that side of the anchor's at all."""
    axis, subject_first = _RELATION_AXES[relation]
    offset = anchor.centre[axis] - subject.centre[axis]
    return offset > 0 if subject_first else offset < 0


# ------------------------------------------------------------------------------------- scenes and images


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """One element of a sequence, uniformly.

    ``rng.choice`` would turn tuples into arrays, and scaling ``rng.random()`` is several times faster than
    ``rng.integers`` for the tens of draws each sample makes.
    """
    return options[int(rng.random() * len(options))]


def _sample_attributes(rng: np.random.Generator, taken: Iterable[ShapeObject]) -> tuple[str, str, str, str]:
    """A (shape, colour, size, style) tuple no object has yet, so that full descriptions are unique."""
    used = {(obj.shape, obj.colour, obj.size, obj.style) for obj in taken}
    while True:
        attributes = (
            _choice(rng, SHAPES),
            _choice(rng, COLOUR_NAMES),
            _choice(rng, SIZES),
            _choice(rng, STYLES),
        )
        if attributes not in used:
            return attributes


def _place(
    rng: np.random.Generator, width: int, height: int, taken: Sequence[Box], resolution: int
) -> Box | None:
    """A random box inside the image, separated from every taken box, or None when none was found."""
    xs = rng.integers(0, resolution - width + 1, size=PLACEMENT_TRIES)
    ys = rng.integers(0, resolution - height + 1, size=PLACEMENT_TRIES)
    for x, y in zip(xs.tolist(), ys.tolist()):
        box = (float(x), float(y), float(width), float(height))
        if all(_separated(box, other, OBJECT_GAP) for other in taken):
            return box
    return None


def _sample_background(rng: np.random.Generator, textured_prob: float) -> Background:
    textured = bool(rng.random() < textured_prob)
    level = int(rng.integers(*BACKGROUND_LEVELS))
    tint = rng.integers(-4, 5, size=3)
    colour = (level + int(tint[0]), level + int(tint[1]), level + int(tint[2]))
    texture = int(rng.integers(*TEXTURE_AMPLITUDES)) if textured else 0
    return Background(colour=colour, texture=texture)


def sample_scene(rng: np.random.Generator, resolution: int, *, textured_prob: float = 0.3) -> Scene:
    """One to four objects with distinct attribute tuples at non-overlapping positions.

    An object that finds no free spot is dropped, so a crowded draw yields fewer objects (never zero: the
    first object always fits).
    """
    objects: list[ShapeObject] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        shape, colour, size, style = _sample_attributes(rng, objects)
        glyph = _object_glyph(shape, size, style, resolution)
        height, width = glyph.shape
        box = _place(rng, width, height, [obj.box for obj in objects], resolution)
        if box is not None:
            objects.append(ShapeObject(shape=shape, colour=colour, size=size, style=style, box=box))
    return Scene(objects=tuple(objects), background=_sample_background(rng, textured_prob))


def _background_pixels(background: Background, resolution: int, rng: np.random.Generator) -> np.ndarray:
    pixels = np.empty((resolution, resolution, 3), dtype=np.int16)
    pixels[:] = background.colour
    if background.texture:
        amplitude = background.texture
        pixels += rng.integers(-amplitude, amplitude + 1, size=(resolution, resolution, 1), dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def render_scene(scene: Scene, resolution: int, rng: np.random.Generator) -> Image.Image:
    """Draw a scene; ``rng`` only feeds the background texture."""
    pixels = _background_pixels(scene.background, resolution, rng)
    for obj in scene.objects:
        x, y, w, h = (int(value) for value in obj.box)
        glyph = _object_glyph(obj.shape, obj.size, obj.style, resolution)
        if glyph.shape != (h, w) or x < 0 or y < 0 or x + w > resolution or y + h > resolution:
            raise ValueError(f"{obj} was not sampled for a {resolution} px image")
        pixels[y : y + h, x : x + w][glyph] = COLOURS[obj.colour]
    return Image.fromarray(pixels)


# ------------------------------------------------------------------------------------------------- text


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


# ---------------------------------------------------------------------------------------- pair statements

_PairTemplate = Callable[[Scene, Scene, np.random.Generator], tuple[str, bool]]


def _contains(scene: Scene, description: _Description) -> bool:
    return any(description.matches(obj) for obj in scene.objects)


def _pair_mention(rng: np.random.Generator, scenes: Sequence[Scene]) -> _Description:
    """A colour and/or shape description, half the time taken from an object of ``scenes``."""
    slots = _choice(rng, (("colour",), ("shape",), ("colour", "shape")))
    objects = [obj for scene in scenes for obj in scene.objects]
    if objects and rng.random() < 0.5:
        return _describe(_choice(rng, objects), slots)
    return _Description(**{slot: _choice(rng, _VALUES[slot]) for slot in slots})


def _both_contain(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    mention = _pair_mention(rng, (left, right))
    statement = f"both images contain {_with_article(mention.phrase())}"
    return statement, _contains(left, mention) and _contains(right, mention)


def _neither_contains(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    mention = _pair_mention(rng, (left, right))
    statement = f"neither image contains {_with_article(mention.phrase())}"
    return statement, not _contains(left, mention) and not _contains(right, mention)


def _exactly_one_contains(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    mention = _pair_mention(rng, (left, right))
    statement = f"there is {_with_article(mention.phrase())} in exactly one image"
    return statement, _contains(left, mention) != _contains(right, mention)


def _side_contains(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    side, scene = _choice(rng, (("left", left), ("right", right)))
    mention = _pair_mention(rng, (scene,))
    return f"the {side} image contains {_with_article(mention.phrase())}", _contains(scene, mention)


def _more_shapes(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    sides = (("left", len(left.objects)), ("right", len(right.objects)))
    first, second = sides if rng.random() < 0.5 else sides[::-1]
    statement = f"the {first[0]} image has more shapes than the {second[0]} image"
    return statement, first[1] > second[1]


def _same_count(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    return "both images have the same number of shapes", len(left.objects) == len(right.objects)


def _side_count(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    side, scene = _choice(rng, (("left", left), ("right", right)))
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    return _side_count_statement(side, count), len(scene.objects) == count


def _side_count_statement(side: str, count: int) -> str:
    return f"the {side} image contains exactly {NUMBER_WORDS[count]} {_plural('shape', count)}"


def _total_count(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, bool]:
    total = len(left.objects) + len(right.objects)
    count = (
        total + int(rng.integers(-1, 2)) if rng.random() < 0.7 else int(rng.integers(2, 2 * MAX_OBJECTS + 1))
    )
    count = min(max(count, 2), 2 * MAX_OBJECTS)
    return f"the two images contain {NUMBER_WORDS[count]} shapes in total", count == total


_PAIR_TEMPLATES: tuple[_PairTemplate, ...] = (
    _both_contain,
    _neither_contains,
    _exactly_one_contains,
    _side_contains,
    _more_shapes,
    _same_count,
    _side_count,
    _total_count,
)


def pair_statement(
    left: Scene, right: Scene, rng: np.random.Generator, *, label: bool | None = None
) -> tuple[str, bool]:
    """An NLVR2-style statement about two scenes and whether it is true.

    The label is drawn first (a fair coin unless ``label`` is given), then templates are tried in random
    order with freshly drawn parameters until one has that truth value, so labels are balanced and each
    template is, as far as the scenes allow, true as often as false.
    """
    wanted = bool(rng.random() < 0.5) if label is None else label
    for index in rng.permutation(len(_PAIR_TEMPLATES)):
        for _ in range(_PAIR_TRIES):
            statement, truth = _PAIR_TEMPLATES[index](left, right, rng)
            if truth == wanted:
                return statement, truth
    # Unreachable in practice; a count statement can always be made true or false.
    side, scene = _choice(rng, (("left", left), ("right", right)))
    actual = len(scene.objects)
    count = actual if wanted else (actual % MAX_OBJECTS) + 1
    return _side_count_statement(side, count), wanted


# ------------------------------------------------------------------------------------------------ shards


def scene_record(scene: Scene, rng: np.random.Generator, resolution: int) -> dict[str, Any]:
    """The json of a sample: captions, objects (pixel ``bbox``, ``category``, ``attributes``) and QA."""
    return {
        "captions": captions_for(scene, rng, resolution),
        "objects": [obj.to_json() for obj in scene.objects],
        "qa": questions_for(scene, rng, resolution),
    }


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Level 1 encodes twice as fast as the default 6 and, on these flat images, compresses about as well.
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True).encode("utf-8")


def _example(rng: np.random.Generator, config: ShapesConfig) -> tuple[Scene, bytes, dict[str, Any]]:
    scene = sample_scene(rng, config.resolution, textured_prob=config.textured_background_prob)
    png = _png_bytes(render_scene(scene, config.resolution, rng))
    return scene, png, scene_record(scene, rng, config.resolution)


def _answers(record: dict[str, Any]) -> set[str]:
    return {answer for qa in record["qa"] for answer in qa["answers"]}


def _image_samples(
    split: str, count: int, rng: np.random.Generator, config: ShapesConfig, answers: set[str]
) -> Iterator[dict[str, Any]]:
    """Single-image samples; QA answers are added to ``answers`` as they are generated."""
    for index in range(count):
        _, png, record = _example(rng, config)
        answers |= _answers(record)
        yield {"__key__": f"{split}-{index:06d}", "png": png, "json": _json_bytes(record)}


def _pair_samples(
    split: str, count: int, rng: np.random.Generator, config: ShapesConfig, answers: set[str]
) -> Iterator[dict[str, Any]]:
    """Pair samples; QA answers of both scenes are added to ``answers`` as they are generated."""
    for index in range(count):
        left, left_png, left_record = _example(rng, config)
        right, right_png, right_record = _example(rng, config)
        statement, label = pair_statement(left, right, rng)
        answers |= _answers(left_record) | _answers(right_record)
        record = {"statement": statement, "label": label, "left": left_record, "right": right_record}
        yield {
            "__key__": f"{split}-{index:06d}",
            "left.png": left_png,
            "right.png": right_png,
            "json": _json_bytes(record),
        }


def _write_shards(directory: Path, samples: Iterator[dict[str, Any]], count: int, per_shard: int) -> int:
    """Write ``count`` samples into ``shard-%06d.tar`` files of ``per_shard`` samples; return the shard count.

    The fixed mtime (and webdataset's fixed user, group and mode) make the tar bytes a function of the
    samples alone.
    """
    directory.mkdir(parents=True)
    shards = 0
    for _ in range(0, count, per_shard):
        path = directory / f"shard-{shards:06d}.tar"
        with path.open("wb") as stream, wds.TarWriter(stream, mtime=0, encoder=False) as sink:
            for sample in itertools.islice(samples, per_shard):
                sink.write(sample)
        shards += 1
    return shards


def vocabulary(answers: Iterable[str]) -> dict[str, list[str]]:
    """The content of ``vocab.json``; ``answers`` are those that occur in the generated QA."""
    return {
        "categories": list(SHAPES),
        "attributes": [*COLOUR_NAMES, *SIZES, *STYLES],
        "answers": sorted(set(answers)),
        "colours": list(COLOUR_NAMES),
        "shapes": list(SHAPES),
        "sizes": list(SIZES),
        "styles": list(STYLES),
    }


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_dataset(root: Path, config: ShapesConfig) -> dict[str, Any]:
    sizes = config.split_sizes()
    seeds = np.random.SeedSequence(config.seed).spawn(len(sizes))
    answers: set[str] = set()
    splits: dict[str, dict[str, int]] = {}
    for (split, count), seed in zip(sizes.items(), seeds):
        make_samples = _pair_samples if split in PAIR_SPLITS else _image_samples
        samples = make_samples(split, count, np.random.default_rng(seed), config, answers)
        shards = _write_shards(root / split, samples, count, config.samples_per_shard)
        splits[split] = {"samples": count, "shards": shards}
    stats = {"splits": splits, "config": asdict(config)}
    _write_json(root / "vocab.json", vocabulary(answers))
    _write_json(root / "stats.json", stats)
    return stats


class ShapesFolderError(UserError):
    """A folder the shapes generator may not write into (someone else's) or reuse (other settings)."""


@dataclass(frozen=True)
class FolderState:
    """What :func:`shapes_folder_state` finds at a path."""

    kind: Literal["absent", "empty", "complete", "incomplete", "foreign", "not_a_folder"]
    config: dict[str, Any] | None = None  # the generator settings recorded in the folder
    format_version: int | None = None

    def differences(self, config: ShapesConfig) -> list[tuple[str, Any, Any]]:
        """``(setting, value in the folder, value asked)`` for every setting that differs."""
        recorded = {**(self.config or {}), "format_version": self.format_version}
        asked = {**asdict(config), "format_version": FORMAT_VERSION}
        return [
            (name, recorded.get(name), asked.get(name))
            for name in [*asked, *sorted(set(recorded) - set(asked))]
            if recorded.get(name) != asked.get(name)
        ]


def _read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp's content when it is one of this generator's, else None."""
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("generator") != GENERATOR:
        return None
    if not isinstance(stamp.get("config"), dict) or not isinstance(stamp.get("format_version"), int):
        return None
    return stamp


def _unstamped_config(root: Path) -> dict[str, Any] | None:
    """The config of a complete folder written before the generator stamped its folders: a ``vocab.json``
    and a ``stats.json`` with ``splits`` and a ``config`` holding exactly the generator's settings."""
    try:
        stats = json.loads((root / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (root / "vocab.json").is_file() or not isinstance(stats, dict) or "splits" not in stats:
        return None
    config = stats.get("config")
    names = {f.name for f in fields(ShapesConfig)}
    return config if isinstance(config, dict) and set(config) == names else None


def shapes_folder_state(out_dir: str | Path) -> FolderState:
    """Whether ``out_dir`` is absent, an empty folder, a shapes folder (complete or interrupted, with the
    settings it was written with), or something else (``foreign``: never written to or deleted)."""
    root = Path(out_dir)
    if not root.exists():
        return FolderState("absent")
    if not root.is_dir():
        return FolderState("not_a_folder")
    if (root / STAMP).exists():
        stamp = _read_stamp(root / STAMP)
        if stamp is None:
            return FolderState("foreign")
        kind = "complete" if stamp.get("complete") is True else "incomplete"
        return FolderState(kind, stamp["config"], stamp["format_version"])
    if not any(root.iterdir()):
        return FolderState("empty")
    unstamped = _unstamped_config(root)
    if unstamped is not None:
        return FolderState("complete", unstamped, FORMAT_VERSION)
    return FolderState("foreign")


def shapes_ready(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a completely written shapes dataset (any settings)."""
    return shapes_folder_state(out_dir).kind == "complete"


def _write_stamp(root: Path, config: ShapesConfig, complete: bool) -> None:
    """Write the stamp atomically; an incomplete one also names the writing process."""
    stamp: dict[str, Any] = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "complete": complete,
        "config": asdict(config),
    }
    if not complete:
        stamp.update(host=socket.gethostname(), pid=os.getpid())
    partial = root / f"{STAMP}.partial"
    _write_json(partial, stamp)
    partial.replace(root / STAMP)


def _staging_prefix(target: Path) -> str:
    return f"{target.name}.vlp-tmp-"


def _remove_dead_staging(target: Path) -> None:
    """Delete staging folders of interrupted generations into ``target``: siblings named
    ``<target>.vlp-tmp-<pid>`` whose stamp says incomplete and names a process of this host that is gone."""
    if not target.parent.is_dir():
        return
    host = socket.gethostname()
    for folder in target.parent.glob(f"{_staging_prefix(target)}*"):
        stamp = _read_stamp(folder / STAMP)
        if stamp is None or stamp.get("complete") is not False or stamp.get("host") != host:
            continue
        pid = stamp.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
            log.info("vlp: removing %s, left by an interrupted shapes generation", folder)
            shutil.rmtree(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _generated_entries(root: Path) -> list[Path]:
    names = [*IMAGE_SPLITS, *PAIR_SPLITS, "vocab.json", "stats.json", f"{STAMP}.partial", STAMP]
    return [root / name for name in names if (root / name).exists()]


def _clear_incomplete(root: Path) -> None:
    """Remove what an interrupted generation wrote into ``root`` (its stamp says so); anything else in
    the folder is kept and stops the generation."""
    for path in _generated_entries(root):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    others = sorted(p.name for p in root.iterdir())
    if others:
        raise ShapesFolderError(
            f"{root} held an interrupted shapes generation and also {others[:5]}, which the generator did "
            "not write: move them out of the folder, then run again"
        )


def _folder_error(
    root: Path, state: FolderState, config: ShapesConfig, root_setting: str, synth_setting: str | None
) -> ShapesFolderError:
    """The error for a folder the generator may not use, naming the settings to change."""
    as_is = (
        f"set {synth_setting}: null (--{synth_setting}=null) to train on the shards in it as they are"
        if synth_setting
        else None
    )
    if state.kind == "not_a_folder":
        return ShapesFolderError(f"{root} exists and is not a folder: set {root_setting} to a folder")
    if state.kind == "foreign":
        options = [as_is, f"set {root_setting} to a new folder to generate the shapes dataset there"]
        return ShapesFolderError(
            f"{root} is not empty and has no {STAMP} stamp: the shapes generator did not write it, and vlp "
            "never writes into such a folder or deletes it.\n" + _options(options)
        )
    changes = "".join(
        f"\n  {name}: {old!r} in the folder, {new!r} asked" for name, old, new in state.differences(config)
    )
    options = [
        f"set {root_setting} to another folder to generate these settings there",
        f"delete {root} yourself to regenerate it",
        as_is,
    ]
    return ShapesFolderError(
        f"{root} holds the shapes dataset generated with other settings:{changes}\n"
        "vlp neither reuses it nor deletes it. " + _options(options)
    )


def _options(options: list[str | None]) -> str:
    """``options`` as one sentence: "A, or b."."""
    text = ", or ".join(o for o in options if o)
    return text[:1].upper() + text[1:] + "."


def _read_stats(root: Path) -> dict[str, Any]:
    """A complete folder's ``stats.json``, splits in the order they are generated."""
    stats = json.loads((root / "stats.json").read_text(encoding="utf-8"))
    order = [*IMAGE_SPLITS, *PAIR_SPLITS]
    splits = stats.get("splits", {})
    stats["splits"] = dict(
        sorted(splits.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    )
    return stats


def write_shapes(
    out_dir: str | Path,
    config: ShapesConfig = DEFAULT_CONFIG,
    *,
    root_setting: str = "--out",
    synth_setting: str | None = None,
) -> dict[str, Any]:
    """Make ``out_dir`` hold the shapes dataset of ``config`` and return its stats.

    A complete folder with these settings is reused as it is (nothing is written). A new or empty folder,
    or one holding an interrupted generation (its stamp says incomplete), is generated: everything is
    written into a sibling ``<out_dir>.vlp-tmp-<pid>`` that is renamed into place only once complete and
    stamped, so a crash never leaves a folder that :func:`shapes_ready` accepts. Any other folder raises
    :class:`ShapesFolderError` naming ``root_setting`` (and ``synth_setting``, the setting that turns
    generation off) and, for a shapes folder of other settings, each difference; nothing is deleted.
    """
    target = Path(out_dir).expanduser().resolve()
    state = shapes_folder_state(target)
    if state.kind == "complete" and not state.differences(config):
        log.info("vlp: %s already holds the shapes dataset with these settings; nothing written", target)
        return _read_stats(target)
    if state.kind not in ("absent", "empty", "incomplete"):
        raise _folder_error(target, state, config, root_setting, synth_setting)
    _remove_dead_staging(target)
    staging = target.with_name(f"{_staging_prefix(target)}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        _write_stamp(staging, config, complete=False)
        stats = _write_dataset(staging, config)
        _write_stamp(staging, config, complete=True)
        if state.kind == "incomplete":
            _clear_incomplete(target)
        try:
            staging.rename(target)  # replaces an empty folder
        except OSError:
            now = shapes_folder_state(target)  # another process finished first?
            if now.kind == "complete" and not now.differences(config):
                shutil.rmtree(staging)
                return _read_stats(target)
            raise _folder_error(target, now, config, root_setting, synth_setting) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return stats
