"""A small CNN that judges shapes images: which (colour, shape) objects are present, and how many objects.

It is the referee of the generation metrics on the shapes data (:mod:`vlp.metrics.semantic`): an image
matches a prompt when the judge finds every (colour, shape) the prompt names. It is a **presence
classifier, not a box detector**: it answers, for every colour x shape pair (8 x 6 = 48 on shapes),
whether the image holds such an object, and how many objects there are (0 .. ``max_objects``), but
draws no boxes. That is all the semantic score asks ("is there a red circle?"), and it trains on one CPU
thread, where the E2E-VLP detector reaches AP50 0.09 on the same data and would be no fair referee.

Presence is read locally, so that colour and shape are bound to the same object: every cell of the
last conv stage's grid scores each colour and each shape (a 1x1 conv), a pair's score at a cell is the
sum of its colour's and its shape's scores (plus a learnt bias), and the image's pair logit is the
maximum over cells. (Pair logits from globally pooled features, tried first, sat at the label prior for
over 500 steps of batch 64: a red square beside a blue circle pools to the same colours and shapes as a
blue square beside a red circle.) The colour and shape presences (maxima over cells of their own scores)
are trained too.

Its features, the global average and maximum of the last conv stage (``2 x channels[-1]`` wide; the
presence head reads that stage cell by cell, the count head through one hidden layer), are the feature
space of the shapes Fréchet distance (:meth:`ShapesJudge.feature_extractor` for
:func:`vlp.metrics.fid.frechet_distance`).

Pixels are normalised as every vlp batch is (mean = std = 0.5: [-1, 1]); the feature extractor takes
[0, 1] images, the torchmetrics convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlp.checkpoints import check_state_matches, load_existing

CONFIG_KEY = "shapes_judge_config"


@dataclass
class JudgeOutput:
    features: Tensor  # [B, 2 * channels[-1]], the Fréchet distance's feature space
    presence_logits: Tensor  # [B, num_colours, num_shapes]
    count_logits: Tensor  # [B, max_objects + 1]
    colour_logits: Tensor | None = None  # [B, num_colours], any object of that colour
    shape_logits: Tensor | None = None  # [B, num_shapes], any object of that shape


def conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ShapesJudge(nn.Module):
    """Conv stages (two 3x3 conv + BatchNorm + ReLU each, stride 2 at the start of every stage but the
    first), then the per-cell presence head and, over the global average + max pooling of the grid (the
    features), the count head: a ``count_hidden`` layer with ReLU and a linear layer (module docstring).

    Args:
        colours, shapes: the names the presence head ranges over (the shapes recipe lists the generator's).
        channels: width of each stage; ``len(channels) - 1`` halvings of the resolution (the default
            three stages leave a 16x16 grid of 64 channels at 64 px, each cell seeing 23 px).
        count_hidden: width of the count head's hidden layer.
        max_objects: the count head classifies 0 .. ``max_objects``.
    """

    def __init__(
        self,
        colours: list[str],
        shapes: list[str],
        max_objects: int,
        channels: list[int] | None = None,
        count_hidden: int = 128,
    ) -> None:
        super().__init__()
        self.colours = list(colours)
        self.shapes = list(shapes)
        channels = list(channels or [16, 32, 64])
        if not channels or min(channels) < 1 or count_hidden < 1 or max_objects < 1:
            raise ValueError(
                f"channels, count_hidden and max_objects must be positive, got {channels}, {count_hidden}, {max_objects}"
            )
        for name, values in (("colours", self.colours), ("shapes", self.shapes)):
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct names, got {values}")
        self.config: dict[str, Any] = {
            "colours": self.colours,
            "shapes": self.shapes,
            "channels": channels,
            "count_hidden": count_hidden,
            "max_objects": max_objects,
        }
        stages, cin = [], 3
        for index, cout in enumerate(channels):
            stages += [conv_block(cin, cout, 1 if index == 0 else 2), conv_block(cout, cout, 1)]
            cin = cout
        self.backbone = nn.Sequential(*stages)
        self.cell_head = nn.Conv2d(cin, len(self.colours) + len(self.shapes), 1)
        self.pair_bias = nn.Parameter(torch.tensor(-4.0))  # pairs start rare, as they are
        self.count_head = nn.Sequential(
            nn.Linear(2 * cin, count_hidden), nn.ReLU(inplace=True), nn.Linear(count_hidden, max_objects + 1)
        )
        self.feature_dim, self.max_objects = 2 * cin, max_objects

    @staticmethod
    def pooled(grid: Tensor) -> Tensor:
        return torch.cat([grid.mean(dim=(2, 3)), grid.amax(dim=(2, 3))], dim=1)

    def features(self, pixels: Tensor) -> Tensor:
        """Pixels ``[B, 3, H, W]`` in [-1, 1] → features ``[B, feature_dim]`` (module docstring)."""
        return self.pooled(self.backbone(pixels))

    def forward(self, pixels: Tensor) -> JudgeOutput:
        grid = self.backbone(pixels)
        cells = self.cell_head(grid)  # [B, colours + shapes, h, w]
        colour, shape = cells[:, : len(self.colours)], cells[:, len(self.colours) :]
        pairs = (colour[:, :, None] + shape[:, None, :]).amax(dim=(3, 4)) + self.pair_bias
        features = self.pooled(grid)
        return JudgeOutput(
            features, pairs, self.count_head(features), colour.amax(dim=(2, 3)), shape.amax(dim=(2, 3))
        )

    def feature_extractor(self) -> JudgeFeatures:
        """The features as a module over [0, 1] images, for :func:`vlp.metrics.fid.frechet_distance`."""
        return JudgeFeatures(self)

    @classmethod
    def from_checkpoint(cls, path: str | Path, prefix: str = "judge.") -> ShapesJudge:
        """The judge of a :class:`~vlp.tasks.shapes_judge.ShapesJudgeTask` checkpoint, in eval mode.

        The architecture comes from the checkpoint's ``shapes_judge_config``, the weights from the keys
        under ``prefix``; every key must match, or the error names those that do not.
        """
        path = Path(path)
        checkpoint = load_existing(
            path,
            f"shapes judge checkpoint {path} not found: train one with "
            "`python -m vlp fit --config configs/probe/shapes_judge.yaml` (a ShapesJudgeTask .ckpt)",
        )
        if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint:
            raise ValueError(f"{path}: no '{CONFIG_KEY}' entry; not a ShapesJudgeTask checkpoint")
        judge = cls(**checkpoint[CONFIG_KEY])
        state = {
            k[len(prefix) :]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(prefix)
        }
        check_state_matches(judge.state_dict(), state, f"{path}: judge weights")
        judge.load_state_dict(state)
        return judge.eval()


class JudgeFeatures(nn.Module):
    """:meth:`ShapesJudge.features` of [0, 1] images (always in eval mode, no gradients)."""

    def __init__(self, judge: ShapesJudge) -> None:
        super().__init__()
        self.judge = judge
        self.num_features = judge.feature_dim

    def train(self, mode: bool = True) -> JudgeFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.judge.features(images * 2 - 1)
