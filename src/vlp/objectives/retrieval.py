"""Image-text retrieval fine-tuning: rank an image's caption above other captions (official ViLT's IRTR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.batch import Batch
from vlp.models.layers.heads import RankHead
from vlp.models.outputs import FusionOutput
from vlp.objectives.base import Objective, ObjectiveOutput


class RetrievalObjective(Objective):
    """Softmax cross-entropy over each image's candidate texts, the true caption first.

    The task runs the encoder on ``B x (1 + negatives)`` image-text pairs, image-major, candidate 0 of
    each image being its own caption; the head scores each pair and the loss asks candidate 0 to win.
    Logs ``rank_acc``: how often it does.
    """

    def __init__(self, head: RankHead) -> None:
        super().__init__()
        self.head = head
        self.input_dim = head.input_dim

    def score(self, pooled: Tensor) -> Tensor:
        """``[N]`` matching scores of ``N`` pooled image-text states (higher = better match)."""
        return self.head(pooled).float()

    def forward(self, outputs: FusionOutput, batch: Batch) -> ObjectiveOutput:
        images = len(batch)
        if outputs.pooled.shape[0] % images:
            raise ValueError(
                f"{outputs.pooled.shape[0]} scored pairs are not a whole number of candidates for {images} images"
            )
        scores = self.score(outputs.pooled).view(images, -1)  # [B, 1 + negatives]
        target = torch.zeros(images, dtype=torch.long, device=scores.device)
        loss = F.cross_entropy(scores, target)
        accuracy = (scores.argmax(-1) == 0).float().mean()
        return ObjectiveOutput(loss, {"rank_acc": accuracy})
