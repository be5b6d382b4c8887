"""Visual question answering: one encoder pass over question + image, answers classified from [CLS]."""

from __future__ import annotations

from typing import Any

from vlp.datamodules.schema import Batch
from vlp.models.outputs import FusionOutput
from vlp.tasks.base import ObjectiveTask


class VQATask(ObjectiveTask):
    """Fine-tuning on VQA batches (:class:`~vlp.datamodules.vqa.VQADataModule`) with
    :class:`~vlp.objectives.VQAObjective`; logs ``val/vqa_score``, the VQA accuracy.

    As official ViLT, recipes give the answer classifier a 10x learning rate
    (``lr_multipliers: {objectives.vqa: 10.0}``) and start from a pre-training run (``init_from``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, objective in self.objectives.items():
            if objective.view is not None:
                raise ValueError(
                    f"objectives.{name}: {type(objective).__name__} reads view {objective.view!r}; "
                    "VQATask runs one pass (question with its image)"
                )

    def forward_model(self, batch: Batch) -> FusionOutput:
        if batch.text_ids is None or batch.pixels is None:
            raise ValueError("VQATask needs batch.text_ids and batch.pixels")
        return self.model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
