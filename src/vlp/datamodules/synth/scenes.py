"""The shapes vocabulary, the generator's config (:class:`ShapesConfig`) and scene sampling.

A scene is one to four objects with distinct (shape, colour, size, style) tuples at separated positions on a
dark, optionally textured background; :func:`relation_holds` says which spatial relations between two of its
objects are clear enough to be stated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlp.datamodules.synth.glyphs import _object_glyph

__all__ = [
    "COLOURS",
    "COLOUR_NAMES",
    "DEFAULT_CONFIG",
    "IMAGE_SPLITS",
    "MAX_OBJECTS",
    "NUMBER_WORDS",
    "PAIR_SPLITS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "STYLES",
    "Background",
    "Scene",
    "ShapeObject",
    "ShapesConfig",
    "relation_holds",
    "sample_scene",
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

MAX_OBJECTS = 4
OBJECT_GAP = 2  # background pixels kept between any two object boxes
PLACEMENT_TRIES = 64
# Two centres must differ by this fraction of the image side along a relation's axis for it to be stated.
RELATION_MARGIN = 0.06
BACKGROUND_LEVELS = (10, 36)  # range of the dark base grey level
TEXTURE_AMPLITUDES = (6, 11)  # range of the per-pixel noise amplitude of textured backgrounds

_RELATION_AXES: dict[str, tuple[int, bool]] = {
    # relation -> (axis, whether the subject comes first along that axis)
    "left of": (0, True),
    "right of": (0, False),
    "above": (1, True),
    "below": (1, False),
}

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


# ----------------------------------------------------------------------------------------------- geometry


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


# ---------------------------------------------------------------------------------------------- sampling


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
