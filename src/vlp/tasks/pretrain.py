"""Image-text pre-training (MLM, ITM, ...) of a single-stream fusion assembly."""

from __future__ import annotations

from vlp.datamodules.schema import Batch
from vlp.models.outputs import FusionOutput
from vlp.tasks.base import ObjectiveTask


class PretrainTask(ObjectiveTask):
    """Pre-training on image-text pairs: the batch's (masked) text with its (possibly swapped) image."""

    def forward_model(self, batch: Batch) -> FusionOutput:
        return self.model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
