"""NLVR2-style visual reasoning: is a statement true of a pair of images?"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlp.batch import Batch
from vlp.models.layers.heads import ClassifierHead
from vlp.models.outputs import FusionOutput
from vlp.objectives.base import Objective, ObjectiveOutput


class NLVR2Objective(Objective):
    """Cross-entropy of a 2-way classifier over the two passes' pooled states, concatenated.

    The task runs the encoder twice (statement + left image as modality type 1, statement + right
    image as type 2) and hands both outputs over; the head reads ``[pooled_left; pooled_right]``, so its
    ``input_dim`` is twice the model width (``input_dim`` here is the model width it reads). Logs
    ``nlvr2_acc``.
    """

    def __init__(self, head: ClassifierHead) -> None:
        super().__init__()
        if head.input_dim % 2:
            raise ValueError(
                f"the NLVR2 head reads two pooled states: its input_dim {head.input_dim} must be even"
            )
        if head.classifier[-1].out_features != 2:
            raise ValueError(f"the NLVR2 head must have 2 classes, has {head.classifier[-1].out_features}")
        self.head = head
        self.input_dim = head.input_dim // 2

    def forward(self, outputs: tuple[FusionOutput, FusionOutput], batch: Batch) -> ObjectiveOutput:
        if batch.pair_labels is None:
            raise ValueError("NLVR2Objective needs batch.pair_labels; read the data with a PairCollator")
        left, right = outputs
        logits = self.head(torch.cat([left.pooled, right.pooled], dim=-1)).float()
        loss = F.cross_entropy(logits, batch.pair_labels)
        accuracy = (logits.argmax(-1) == batch.pair_labels).float().mean()
        return ObjectiveOutput(loss, {"nlvr2_acc": accuracy})
