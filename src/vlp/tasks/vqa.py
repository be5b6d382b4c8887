"""Visual question answering: one encoder pass over question + image, answers classified from [CLS]."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vlp.batch import Batch
from vlp.metrics.vqa_official import OfficialVQAAccuracy
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
    :class:`~vlp.objectives.VQAObjective`; logs ``val/vqa_score``, the VQA score of the targets.

    As official ViLT, recipes give the answer classifier a 10x learning rate
    (``lr_multipliers: {objectives.vqa: 10.0}``) and start from a pre-training run (``init_from``).

    **Real VQAv2 data** (batches carrying ``Batch.references``, each row's ten annotators' answers): the
    validation and test steps score the answered questions only (test-dev / test questions, without
    answers, have nothing to be scored against and are left out of the loss and of every figure), and
    also log ``val/vqa_accuracy`` (``test/`` in ``test``): the official VQA accuracy
    (:class:`~vlp.metrics.vqa_official.OfficialVQAAccuracy`) of the answer string of ``vocab.json`` the
    model ranks first, against the ten answers, over the whole split (every process's questions). It
    differs from ``vqa_score``, which reads ViLT's rounded targets (0.3, 0.6, 0.9) and only answers in
    the vocabulary. Shapes batches (no references) are evaluated exactly as before: no
    ``vqa_accuracy``.

    ``predict`` writes ``vqa_results.json`` under ``predict_dir`` in the VQAv2 results format,
    ``[{"question_id": ..., "answer": ...}]``: each question's highest-scoring answer of ``vocab.json``'s
    ``answers``, test questions included. The question id is the dataset's integer ``question_id`` when
    the questions carry one (VQAv2: the file the evaluation server takes), else the batch row's key,
    ``"<sample key>/q<index of the question in the sample's qa list>"``
    (:class:`~vlp.datamodules.vqa.VQACollator`): a string, stable across runs.
    """

    PREDICT_FILES = ("vqa_results.json",)
    PREDICT_ORDER = "question_id"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_views(self.objectives, (None,), "VQATask runs one pass (question with its image)")
        self.vqa_accuracy = OfficialVQAAccuracy()
        self._answers: list[str] = []
        self._keep_output = False
        self._kept_output: FusionOutput | None = None

    def forward_model(self, batch: Batch) -> FusionOutput:
        if batch.text_ids is None or batch.pixels is None:
            raise ValueError("VQATask needs batch.text_ids and batch.pixels")
        output = self.model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        if self._keep_output:  # evaluate reads the answers off the pass the losses were computed on
            self._kept_output = output
        return output

    def predicted_answers(self, output: FusionOutput) -> list[str]:
        """The answer of ``vocab.json`` the VQA head ranks first, per row."""
        objective = active_objective(self, VQAObjective, "answers")
        with fsdp_gathered(objective):
            best = objective.head(output.pooled).float().argmax(-1).tolist()
        return [self._answers[i] for i in best]

    # --------------------------------------------------------------------------------- evaluation

    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._answers = []  # read from the data module's vocab.json when a batch needs them

    def on_test_start(self) -> None:
        super().on_test_start()
        self._answers = []

    def evaluate(self, batch: Batch, stage: str) -> None:
        """Losses and ``vqa_score`` as every task; with references (real data), over the answered rows
        only, whose predicted answers also go into the official accuracy."""
        if batch.references is None:
            super().evaluate(batch, stage)
            return
        rows = [i for i, answers in enumerate(batch.references) if answers]
        if not rows:  # test questions only: nothing to score
            return
        if len(rows) < len(batch):
            batch = answered_rows(batch, rows)
        if not self._answers:
            self._answers = evaluation_answers(self.trainer)
        self._keep_output = True
        try:
            self.compute_losses(batch, stage)
        finally:
            self._keep_output = False
        output, self._kept_output = self._kept_output, None
        if output is None or batch.references is None:
            raise RuntimeError("VQATask.evaluate: the losses ran no forward pass through forward_model")
        self.vqa_accuracy.update(self.predicted_answers(output), batch.references)

    def on_validation_epoch_end(self) -> None:
        self.log_official_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self.log_official_accuracy("test")

    def log_official_accuracy(self, stage: str) -> None:
        """Log ``<stage>/vqa_accuracy`` when any process scored a question, then reset.

        Every process computes (the metric sums the processes' totals, a collective), so the decision to
        log is the same everywhere; with shapes data no process has scored any and nothing is logged.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*called before the ``update`` method", category=UserWarning
            )
            accuracy = self.vqa_accuracy.compute()
        self.vqa_accuracy.reset()
        if not torch.isnan(accuracy):
            self.log(f"{stage}/vqa_accuracy", accuracy.float(), sync_dist=False)  # already every process's

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
        ids = self.row_question_ids(batch)
        answers = self.predicted_answers(self.forward_model(batch))
        return [{"question_id": question, "answer": answer} for question, answer in zip(ids, answers)]

    def row_question_ids(self, batch: Batch) -> list[int] | list[str]:
        """The integer question ids of the rows when the data has them, else the row keys; data that
        has them for some questions only is refused (the results file needs one kind of id)."""
        if batch.question_ids is None:
            ids: list[int] | list[str] = list(batch.keys)
        else:
            missing = [key for key, qid in zip(batch.keys, batch.question_ids) if qid is None]
            if missing:
                raise ValueError(
                    f"questions {missing[:5]} have no integer question_id while others of the batch do: "
                    "the VQAv2 results file needs one for every question"
                )
            ids = [qid for qid in batch.question_ids if qid is not None]
        if self._predict_rows and isinstance(self._predict_rows[0]["question_id"], int) != isinstance(
            ids[0], int
        ):
            raise ValueError(
                f"batch {batch.keys[0]}...: some questions of the predict split have an integer "
                "question_id and others not; the VQAv2 results file needs one for every question"
            )
        return ids

    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        return [write_json(folder / "vqa_results.json", rows)]


def evaluation_answers(trainer: Any) -> list[str]:
    """The data module's ``vocab.json`` ``answers``, which the official accuracy compares by name."""
    vocab = getattr(getattr(trainer, "datamodule", None), "vocab", None)
    answers = vocab.get("answers") if isinstance(vocab, dict) else None
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(
            "VQATask scores real VQA data (batches with the annotators' answers) with the official accuracy "
            "of the predicted answer strings: it reads them from the data module's vocab.json 'answers' "
            "(its `vocab`); evaluate through a ShardDataModule whose folder has that vocab.json"
        )
    return answers


def answered_rows(batch: Batch, rows: list[int]) -> Batch:
    """The VQA batch restricted to ``rows`` (every field a VQA batch carries, row by row)."""
    index = torch.tensor(rows)

    def pick(values: Any) -> Any:
        if values is None:
            return None
        if isinstance(values, torch.Tensor):
            return values[index.to(values.device)]
        return [values[i] for i in rows]

    return replace(
        batch,
        keys=pick(batch.keys),
        pixels=pick(batch.pixels),
        pixel_mask=pick(batch.pixel_mask),
        text_ids=pick(batch.text_ids),
        text_mask=pick(batch.text_mask),
        answers=pick(batch.answers),
        captions=pick(batch.captions),
        references=pick(batch.references),
        question_ids=pick(batch.question_ids),
    )
