"""GenerationEvaluation with an oracle judge that reads the presence grid written into the images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from vlp.datamodules.synth.scenes import COLOUR_NAMES, SHAPES, sample_scene
from vlp.datamodules.synth.text import captions_for
from vlp.metrics.generation import GenerationEvaluation
from vlp.metrics.shapes_judge import JudgeOutput

C, S = len(COLOUR_NAMES), len(SHAPES)


class GridJudge(nn.Module):
    """Pixel (c, s) of the red channel above 0 (in [-1, 1]) means colour c, shape s is present."""

    colours, shapes, feature_dim = list(COLOUR_NAMES), list(SHAPES), C * S

    def forward(self, pixels: Tensor) -> JudgeOutput:
        grid = pixels[:, 0]
        return JudgeOutput(grid.flatten(1), (grid > 0).float() * 20 - 10, torch.zeros(len(pixels), 5))

    def feature_extractor(self) -> nn.Module:
        judge = self

        class Features(nn.Module):
            num_features = C * S

            def forward(self, images: Tensor) -> Tensor:
                return judge(images * 2 - 1).features + 0.1 * images[:, 1].flatten(1)

        return Features()


def scene_images(n: int) -> tuple[Tensor, list[str]]:
    rng = np.random.default_rng(0)
    images, prompts = torch.rand(n, 3, C, S) * 0.4, []
    for row in range(n):
        scene = sample_scene(rng, 64)
        for obj in scene.objects:
            images[row, 0, COLOUR_NAMES.index(obj.colour), SHAPES.index(obj.shape)] = 0.9
        prompts.append(max(captions_for(scene, rng, 64), key=len))
    return images, prompts


def test_right_images_score_one_against_their_prompts_and_low_against_shifted_ones() -> None:
    images, prompts = scene_images(64)
    evaluation = GenerationEvaluation(GridJudge())
    for start in range(0, 64, 16):
        part = slice(start, start + 16)
        evaluation.update(images[part], prompts[part], images[part])
    result = evaluation.compute()
    assert result["semantic_score"] == 1.0 and result["semantic_score_real"] == 1.0
    assert result["semantic_score_shuffled"] < 0.3
    assert abs(result["shapes_fd"]) < 1e-3  # the generated images are the real ones
    evaluation.reset()
    blank = torch.zeros_like(images)
    evaluation.update(blank[:16], prompts[:16], images[:16])
    result = evaluation.compute()
    assert result["semantic_score"] == 0.0 and result["semantic_score_real"] == 1.0
    assert result["shapes_fd"] > 0.1


def test_counts_must_match_and_a_feature_space_is_required() -> None:
    evaluation = GenerationEvaluation(GridJudge())
    with pytest.raises(ValueError, match="one of each per prompt"):
        evaluation.update(torch.rand(3, 3, C, S), ["a", "b"])
    with pytest.raises(ValueError, match="a judge, inception_weights, or both"):
        GenerationEvaluation()


def test_the_distance_is_computed_in_full_precision_under_bf16_autocast() -> None:
    images, prompts = scene_images(16)
    shifted = (images + 0.3).clamp(0, 1)
    evaluation = GenerationEvaluation(GridJudge())
    evaluation.update(shifted, prompts, images)
    reference = evaluation.compute()["shapes_fd"]
    evaluation.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        evaluation.update(shifted.bfloat16(), prompts, images.bfloat16())
    assert evaluation.compute()["shapes_fd"] == pytest.approx(reference, rel=1e-2)
    assert evaluation.distances["shapes_fd"].compute().dtype == torch.float32
