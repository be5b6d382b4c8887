"""The shapes caption check: true of the scene a caption was written for, false where a statement fails."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlp.datamodules.synth.scenes import ShapeObject, sample_scene
from vlp.datamodules.synth.text import captions_for
from vlp.datamodules.synth.truth import ShapesCaptionCheck, caption_family, caption_holds, objects_from_json


def obj(shape: str, colour: str, size: str, style: str, x: float, y: float) -> ShapeObject:
    return ShapeObject(shape=shape, colour=colour, size=size, style=style, box=(x, y, 10.0, 10.0))


# A red circle top left, a blue square to its right, a large green filled triangle below both.
SCENE = (
    obj("circle", "red", "small", "filled", 5, 5),
    obj("square", "blue", "small", "outlined", 40, 6),
    obj("triangle", "green", "large", "filled", 20, 45),
)


@pytest.mark.parametrize(
    ("caption", "holds"),
    [
        # listings: each listed object present; a count prefix also fixes the number
        ("a small red filled circle and a small blue outlined square", True),
        (
            "an image of a small red filled circle, a small blue outlined square and a large green filled triangle",
            True,
        ),
        ("a picture showing a small red outlined circle", False),  # style differs
        (
            "three shapes: a small red filled circle, a small blue outlined square and a large green filled triangle",
            True,
        ),
        (
            "two shapes: a small red filled circle and a small blue outlined square",
            False,
        ),  # three in the scene
        # counts
        ("there are exactly three shapes", True),
        ("there are exactly two shapes", False),
        ("there is exactly one red shape", True),
        ("there are exactly two red shapes", False),
        ("there is exactly one square", True),
        ("there are exactly zero stars", True),
        # single mentions
        ("there is a blue square", True),
        ("there is a red square", False),
        ("the image contains a large shape", True),
        ("the image contains a large circle", False),
        ("an outlined shape on a dark background", True),
        ("a white shape on a dark background", False),
        # relations, all three templates
        ("a red circle left of a blue square", True),
        ("a blue square left of a red circle", False),
        ("the green triangle is below the blue square", True),
        ("the green triangle is above the blue square", False),
        ("there is a red shape to the left of the square", True),
        ("there is a red shape to the right of the square", False),
        ("a triangle above a circle", False),
        ("a circle above a large shape", True),
        ("a yellow star right of a red circle", False),  # no yellow star
    ],
)
def test_hand_written_captions(caption: str, holds: bool) -> None:
    assert caption_holds(caption, SCENE) is holds


def test_relations_are_read_loosely() -> None:
    # centres 4 px apart along x and 30 px apart along y: the generator would not say "left of" (nor
    # anything along x), but the caption is not false of this image either, so it never serves as a mismatch
    scene = (obj("circle", "red", "small", "filled", 5, 5), obj("square", "blue", "small", "filled", 9, 35))
    assert caption_holds("a red circle left of a blue square", scene)
    assert not caption_holds("a red circle right of a blue square", scene)


def test_every_generated_caption_holds_of_its_own_scene() -> None:
    rng = np.random.default_rng(0)
    for resolution in (48, 64, 128):
        for _ in range(200):
            scene = sample_scene(rng, resolution)
            objects = objects_from_json(
                {"objects": [json.loads(json.dumps(o.to_json())) for o in scene.objects]}
            )
            for caption in captions_for(scene, rng, resolution):
                assert caption_holds(caption, objects), (caption, scene)


def test_random_other_scenes_are_mostly_mismatches() -> None:
    """Across scenes, the captions are mostly false (a check that called everything true would fail)."""
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, 64) for _ in range(300)]
    captions = [captions_for(scene, rng, 64) for scene in scenes]
    checked = [caption_holds(c, scenes[(i + 1) % 300].objects) for i, cs in enumerate(captions) for c in cs]
    assert 0.02 < sum(checked) / len(checked) < 0.2


def test_check_reads_sample_json() -> None:
    annotations = [{"objects": [o.to_json() for o in SCENE]}, {"objects": [SCENE[0].to_json()]}]
    assert ShapesCaptionCheck()("there is a blue square", annotations) == [True, False]


def test_caption_outside_the_grammar_is_named() -> None:
    with pytest.raises(ValueError, match="a dog on a sofa"):
        caption_holds("a dog on a sofa", SCENE)


@pytest.mark.parametrize(
    ("annotation", "field"),
    [
        ({"captions": ["x"]}, "'objects'"),
        ({"objects": [{"bbox": [0, 0, 1, 1], "category": "circle"}]}, r"'objects'\[0\]"),
    ],
)
def test_json_without_shapes_objects_is_named(annotation: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        objects_from_json(annotation)


@pytest.mark.parametrize(
    ("caption", "family"),
    [
        ("an image of a small red filled circle", "listing"),
        ("two shapes: a small red filled circle and a small blue outlined square", "listing"),
        ("there are exactly two red shapes", "count"),
        ("there is a red shape to the left of the square", "relation"),
        ("the green triangle is below the blue square", "relation"),
        ("there is a blue square", "single"),
        ("an outlined shape on a dark background", "single"),
    ],
)
def test_caption_family(caption: str, family: str) -> None:
    assert caption_family(caption) == family
