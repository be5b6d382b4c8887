"""Image-text matching on the pooled [CLS] state."""

from __future__ import annotations

import torch.nn.functional as F

from vlp.batch import Batch
from vlp.models.layers.heads import ITMHead
from vlp.models.outputs import FusionOutput
from vlp.objectives.base import Objective, ObjectiveOutput


class ITMObjective(Objective):
    """Binary cross-entropy (as 2-way softmax) on matched vs. swapped image-text pairs."""

    view = "itm"
    reads_only_labelled_text = True  # [CLS] alone: the ITM view has no labelled rows

    def __init__(self, head: ITMHead) -> None:
        super().__init__()
        self.head = head
        self.input_dim = head.input_dim

    def forward(self, outputs: FusionOutput, batch: Batch) -> ObjectiveOutput:
        if batch.itm_labels is None:
            raise ValueError("ITMObjective needs batch.itm_labels; enable ITM pairs in the data module")
        logits = self.head(outputs.pooled).float()
        loss = F.cross_entropy(logits, batch.itm_labels)
        accuracy = (logits.argmax(-1) == batch.itm_labels).float().mean()
        return ObjectiveOutput(loss, {"itm_acc": accuracy})
