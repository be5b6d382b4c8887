"""Text→image generation metrics on one set of prompts: semantic score and Fréchet distances.

:class:`GenerationEvaluation` takes, batch by batch, the generated images (one per prompt), the prompts
and, optionally, the real images the prompts describe (all float ``[N, 3, H, W]`` in [0, 1]) and reports:

- with a judge (on shapes, :class:`~vlp.metrics.shapes_judge.ShapesJudge`): ``semantic_score`` of the
  generated images (:class:`~vlp.metrics.semantic.SemanticScore`); ``semantic_score_shuffled``, the same
  images judged against another prompt of the batch (each prompt moved by one: what a generator that
  ignores the text would score at this image quality); ``semantic_score_real``, the real images against
  their own prompts (the judge's ceiling on these prompts); ``count_acc`` where prompts state a count;
  and ``shapes_fd``, the Fréchet distance between generated and real images in the judge's feature space;
- with ``inception_weights``: ``fid``, the standard Inception FID (:func:`vlp.metrics.fid.frechet_distance`).

It is a plain object, not a module, so a task that holds one does not save its weights in checkpoints;
:meth:`to` moves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vlp.metrics.fid import frechet_distance
from vlp.metrics.semantic import SemanticScore

if TYPE_CHECKING:
    from torchmetrics import Metric

    from vlp.metrics.shapes_judge import ShapesJudge


class GenerationEvaluation:
    """Semantic scores and Fréchet distances over everything seen since the last :meth:`reset`.

    Args:
        judge: the shapes judge (``None``: no semantic score and no ``shapes_fd``).
        inception_weights: local path of the FID Inception weights (``None``: no ``fid``).
        threshold: presence probability above which the judge counts an object as there.
    """

    def __init__(
        self, judge: ShapesJudge | None = None, inception_weights: str | None = None, threshold: float = 0.5
    ) -> None:
        if judge is None and inception_weights is None:
            raise ValueError("GenerationEvaluation needs a judge, inception_weights, or both")
        self.judge = None if judge is None else judge.eval().requires_grad_(False)
        self.threshold = threshold
        self.semantic: dict[str, SemanticScore] = {}
        self.distances: dict[str, Metric] = {}
        if judge is not None:
            self.semantic = {
                name: SemanticScore(judge.colours, judge.shapes) for name in ("generated", "shuffled", "real")
            }
            self.distances["shapes_fd"] = frechet_distance(judge.feature_extractor())
        if inception_weights is not None:
            self.distances["fid"] = frechet_distance(inception_weights=inception_weights)

    def to(self, device: torch.device | str) -> GenerationEvaluation:
        if self.judge is not None:
            self.judge.to(device)
        for metric in [*self.semantic.values(), *self.distances.values()]:
            metric.to(device)
        return self

    def reset(self) -> None:
        for metric in [*self.semantic.values(), *self.distances.values()]:
            metric.reset()

    @torch.no_grad()
    def update(self, generated: Tensor, prompts: Sequence[str], real: Tensor | None = None) -> None:
        """One generated image per prompt, and optionally the real images of the prompts, in [0, 1].

        Runs in fp32 whatever autocast is on (under bf16 the distance would come back rounded to bf16).
        """
        with torch.autocast(generated.device.type, enabled=False):
            self._update(generated.float(), list(prompts), None if real is None else real.float())

    def _update(self, generated: Tensor, prompts: list[str], real: Tensor | None) -> None:
        if len(generated) != len(prompts) or (real is not None and len(real) != len(prompts)):
            raise ValueError(
                f"{len(generated)} generated images, {len(prompts)} prompts"
                + ("" if real is None else f", {len(real)} real images")
                + ": one of each per prompt"
            )
        if self.judge is not None:
            present, counts = self.judge_images(generated)
            self.semantic["generated"].update(present, prompts, counts)
            if len(prompts) > 1:
                self.semantic["shuffled"].update(present, prompts[1:] + prompts[:1])
            if real is not None:
                real_present, real_counts = self.judge_images(real)
                self.semantic["real"].update(real_present, prompts, real_counts)
        if real is not None:
            for metric in self.distances.values():
                metric.update(real, real=True)
                metric.update(generated, real=False)

    def judge_images(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The judge's presence grid and object count of [0, 1] images."""
        output = self.judge(images * 2 - 1)
        return output.presence_logits.sigmoid() > self.threshold, output.count_logits.argmax(dim=1)

    def compute(self) -> dict[str, float]:
        """The figures (module docstring); distances need at least two real and two generated images."""
        result: dict[str, float] = {}
        if self.semantic:
            generated = self.semantic["generated"].compute()
            result.update({name: float(value) for name, value in generated.items()})
            for name in ("shuffled", "real"):
                if int(self.semantic[name].scored) > 0:
                    result[f"semantic_score_{name}"] = float(self.semantic[name].compute()["semantic_score"])
        for name, metric in self.distances.items():
            if int(metric.real_features_num_samples) >= 2 and int(metric.fake_features_num_samples) >= 2:
                result[name] = float(metric.compute())
        return result
