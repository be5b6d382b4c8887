"""Masked language modelling over the text stream of a fusion encoder."""

from __future__ import annotations

import torch.nn.functional as F

from vlp.batch import Batch
from vlp.models.layers.heads import MLMHead
from vlp.models.outputs import FusionOutput
from vlp.objectives.base import Objective, ObjectiveOutput


class MLMObjective(Objective):
    """Cross-entropy on the masked positions only; the vocabulary head sees ``[M, D]``, not ``[B, L, D]``."""

    view = "mlm"
    reads_only_labelled_text = True

    def __init__(self, head: MLMHead) -> None:
        super().__init__()
        self.head = head
        self.input_dim = head.input_dim

    def forward(self, outputs: FusionOutput, batch: Batch) -> ObjectiveOutput:
        if batch.mlm_labels is None:
            raise ValueError("MLMObjective needs batch.mlm_labels; enable MLM masking in the data module")
        labelled = batch.mlm_labels != -100
        targets = batch.mlm_labels[labelled]
        logits = self.head(outputs.text_states[labelled]).float()
        if targets.numel() == 0:  # keeps every parameter in the graph (DDP) with a zero loss
            zero = logits.sum() * 0.0
            return ObjectiveOutput(zero, {"mlm_acc": zero.detach()})
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return ObjectiveOutput(loss, {"mlm_acc": accuracy})
