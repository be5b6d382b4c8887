"""Visual question answering: one encoder pass over question + image, answers classified from [CLS]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlp.batch import Batch
from vlp.models.outputs import FusionOutput
from vlp.objectives.vqa import VQAObjective
from vlp.tasks.base import ObjectiveTask, check_views
from vlp.tasks.e2e_base import fsdp_gathered
from vlp.tasks.predict_files import (
    Row,
    RowPredictionWriter,
    active_objective,
    head_classes,
    vocab_list,
    write_json,
)


class VQATask(RowPredictionWriter, ObjectiveTask):
    """Fine-tuning on VQA batches (:class:`~vlp.datamodules.vqa.VQACollator`) with
    :class:`~vlp.objectives.VQAObjective`; logs ``val/vqa_score``, the VQA accuracy.

    As official ViLT, recipes give the answer classifier a 10x learning rate
    (``lr_multipliers: {objectives.vqa: 10.0}``) and start from a pre-training run (``init_from``).

    ``predict`` writes ``vqa_results.json`` under ``predict_dir`` in the VQAv2 results format,
    ``[{"question_id": ..., "answer": ...}]``: each question's highest-scoring answer of ``vocab.json``'s
    ``answers``. The question id is the batch row's key, ``"<sample key>/q<index of the question in the
    sample's qa list>"`` (:class:`~vlp.datamodules.vqa.VQACollator`): a string, stable across runs.
    """

    PREDICT_FILES = ("vqa_results.json",)
    PREDICT_ORDER = "question_id"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_views(self.objectives, (None,), "VQATask runs one pass (question with its image)")
        self._answers: list[str] = []

    def forward_model(self, batch: Batch) -> FusionOutput:
        if batch.text_ids is None or batch.pixels is None:
            raise ValueError("VQATask needs batch.text_ids and batch.pixels")
        return self.model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)

    # --------------------------------------------------------------------------------- prediction

    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._answers = vocab_list(self.trainer, "answers", "answers")
        classes = head_classes(active_objective(self, VQAObjective, "answers").head)
        if classes is not None and classes != len(self._answers):
            raise ValueError(
                f"the VQA head predicts {classes} answers but the data's vocab.json lists "
                f"{len(self._answers)}: predict with the vocab.json the task was trained on"
            )

    @torch.no_grad()
    def predict_rows(self, batch: Batch, batch_idx: int) -> list[Row]:
        objective = active_objective(self, VQAObjective, "answers")
        output = self.forward_model(batch)
        with fsdp_gathered(objective):
            best = objective.head(output.pooled).float().argmax(-1).tolist()
        return [{"question_id": key, "answer": self._answers[i]} for key, i in zip(batch.keys, best)]

    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        return [write_json(folder / "vqa_results.json", rows)]
