"""Pair statements: NLVR2-style sentences about two scenes, with whether each is true."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vlp.datamodules.synth.scenes import MAX_OBJECTS, NUMBER_WORDS, Scene, _choice
from vlp.datamodules.synth.text import _VALUES, _describe, _Description, _plural, _with_article

__all__ = ["pair_statement"]


_PAIR_TRIES = 8

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
