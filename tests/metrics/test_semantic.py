"""Prompt parser on the shapes templates and the semantic score with an oracle judge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlp.datamodules.synth.scenes import COLOUR_NAMES, SHAPES, Scene, sample_scene
from vlp.datamodules.synth.text import captions_for
from vlp.metrics.semantic import PromptObjects, SemanticScore, parse_prompt, prompt_satisfied

COLOURS, NAMES = list(COLOUR_NAMES), list(SHAPES)


def parse(prompt: str) -> PromptObjects:
    return parse_prompt(prompt, COLOURS, NAMES)


@pytest.mark.parametrize(
    ("prompt", "mentions", "count"),
    [
        (
            "a small red filled circle and a large blue outlined square",
            [("red", "circle"), ("blue", "square")],
            None,
        ),
        (
            "two shapes: a large white filled star and a small cyan outlined hexagon",
            [("white", "star"), ("cyan", "hexagon")],
            2,
        ),
        ("there are exactly two red shapes", [("red", None)], None),
        ("there is exactly one shape", [], 1),
        ("there are exactly two triangles", [(None, "triangle")], None),
        ("there is a large diamond", [(None, "diamond")], None),
        ("a green shape on a dark background", [("green", None)], None),
        ("the small shape is to the left of the purple star", [("purple", "star")], None),
        ("an orange square above a large outlined shape", [("orange", "square")], None),
        ("a picture showing a small red filled circle", [("red", "circle")], None),
    ],
)
def test_template_captions_parse_to_the_objects_they_name(prompt, mentions, count) -> None:
    assert parse(prompt) == PromptObjects(tuple(mentions), count)


def presence(scene: Scene) -> torch.Tensor:
    grid = torch.zeros(len(COLOURS), len(NAMES), dtype=torch.bool)
    for obj in scene.objects:
        grid[COLOURS.index(obj.colour), NAMES.index(obj.shape)] = True
    return grid


def scenes_and_captions(n: int) -> list[tuple[Scene, list[str]]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, 64)
        out.append((scene, captions_for(scene, rng, 64)))
    return out


def test_every_generated_caption_is_satisfied_by_its_own_scene_and_listings_name_every_object() -> None:
    for scene, captions in scenes_and_captions(300):
        for caption in captions:
            parsed = parse(caption)
            assert prompt_satisfied(presence(scene), parsed, COLOURS, NAMES), caption
            if parsed.count is not None:
                assert parsed.count == len(scene.objects), caption
        objects = {(o.colour, o.shape) for o in scene.objects}
        assert any(set(parse(c).mentions) == objects for c in captions)  # the listing caption


def test_an_oracle_judge_scores_own_captions_one_and_mismatched_captions_low() -> None:
    data = scenes_and_captions(200)
    grids = torch.stack([presence(scene) for scene, _ in data])
    counts = torch.tensor([len(scene.objects) for scene, _ in data])
    own = [captions[0] for _, captions in data]
    metric = SemanticScore(COLOURS, NAMES)
    metric.update(grids, own, counts)
    result = metric.compute()
    assert result["semantic_score"] == 1.0
    assert result["scored"] + result["unscored"] == len(data)
    assert result.get("count_acc", torch.tensor(1.0)) == 1.0
    metric.reset()
    metric.update(grids, own[1:] + own[:1])  # each image judged against the next image's caption
    assert metric.compute()["semantic_score"] < 0.4


def test_shape_of_the_presence_grid_is_checked() -> None:
    with pytest.raises(ValueError, match="present must be"):
        SemanticScore(COLOURS, NAMES).update(torch.zeros(2, 3, 4, dtype=torch.bool), ["a", "b"])


def test_the_count_words_are_the_generators() -> None:
    """The metric keeps its own list (metrics do not import the generator); it must read what the generator writes."""
    from vlp.datamodules.synth import scenes
    from vlp.metrics import semantic

    assert semantic.NUMBER_WORDS == scenes.NUMBER_WORDS
