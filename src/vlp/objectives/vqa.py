"""Visual question answering as multi-label classification over the answer vocabulary."""

from __future__ import annotations

import torch.nn.functional as F

from vlp.batch import Batch
from vlp.metrics.vqa import vqa_score
from vlp.models.layers.heads import ClassifierHead
from vlp.models.outputs import FusionOutput
from vlp.objectives.base import Objective, ObjectiveOutput


class VQAObjective(Objective):
    """Binary cross-entropy of every answer's logit against its soft score, times the number of answers.

    The loss is BCE averaged over questions *and* answers, scaled by the answer count (official ViLT,
    after BAN): the per-question sum of the answers' BCE terms. Logs ``vqa_score``, the batch's VQA
    accuracy (the soft score of each question's top answer).
    """

    def __init__(self, head: ClassifierHead) -> None:
        super().__init__()
        self.head = head
        self.input_dim = head.input_dim

    def forward(self, outputs: FusionOutput, batch: Batch) -> ObjectiveOutput:
        if batch.answers is None:
            raise ValueError(
                "VQAObjective needs batch.answers (soft scores); read the data with a VQACollator"
            )
        logits = self.head(outputs.pooled).float()
        targets = batch.answers.float()
        if logits.shape[1] != targets.shape[1]:
            raise ValueError(
                f"the VQA head predicts {logits.shape[1]} answers but the batch scores {targets.shape[1]} "
                f"(vocab.json 'answers'): set the head's num_classes to {targets.shape[1]}"
            )
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        return ObjectiveOutput(loss, {"vqa_score": vqa_score(logits.detach(), targets).mean()})
