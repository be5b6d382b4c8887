"""VQA accuracy as the official VQA evaluation (``vqaEval.py`` of the VQA API) computes it.

An answer is cleaned (new lines and tabs to spaces, surrounding white space removed) and then, as the
official code does, *processed* (:func:`normalize_answer`, from
:mod:`vlp.datamodules.convert.vqa_answers`): punctuation removed or turned into spaces, lower case, number
words up to ten turned into digits (``"none"`` too, into ``"0"``), the articles *a*, *an*, *the* removed
and apostrophe-less contractions restored (``"dont"`` -> ``"don't"``).

The processing is applied only to questions whose ten cleaned ground-truth answers are not all the same
string; when they all agree, neither they nor the prediction are processed, so the prediction must equal
them exactly (``"Yes"`` scores 0 against ten ``"yes"``). This is the official code's behaviour, kept here
so that scores match those of the evaluation server.

The accuracy of a prediction is the average, over the ten ways of leaving one annotator out, of
``min(1, matches / 3)`` with ``matches`` the number of the nine others who gave the prediction: an answer
given by 1, 2, 3 or at least 4 of ten annotators scores 0.3, 0.6, 0.9 or 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from vlp.datamodules.convert.vqa_answers import (
    clean_answer,
    normalize_answer,
    process_digits_articles,
    process_punctuation,
)

__all__ = ["OfficialVQAAccuracy", "normalize_answer", "vqa_accuracy"]


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """The official accuracy of ``prediction`` against the annotators' answers (ten in VQAv2).

    The answers are compared processed (:func:`normalize_answer`) when the cleaned ground-truth answers
    are not all the same, else as cleaned only. The result is the mean over the leave-one-annotator-out
    subsets of ``min(1, matches / 3)``, summed in annotator order as the official code sums, so the float
    is the same to the last bit.
    """
    if isinstance(gt_answers, str) or not gt_answers:
        raise ValueError(f"gt_answers must be a non-empty list of answer strings, got {gt_answers!r}")
    answers = [clean_answer(answer) for answer in gt_answers]
    predicted = clean_answer(prediction)
    if len(set(answers)) > 1:
        answers = [process_digits_articles(process_punctuation(answer)) for answer in answers]
        predicted = process_digits_articles(process_punctuation(predicted))
    total = 0.0
    for left_out in range(len(answers)):
        matches = sum(1 for i, answer in enumerate(answers) if i != left_out and answer == predicted)
        total += min(1.0, matches / 3)
    return total / len(answers)


class OfficialVQAAccuracy(Metric):
    """Mean official VQA accuracy (:func:`vqa_accuracy`) over the questions seen since the last reset,
    summed over processes (float64 sum and question count), so a DDP evaluation scores the whole split.

    ``compute`` returns a 0-dim float64 tensor in [0, 1] (multiply by 100 for the server's percentage);
    NaN before any question was seen.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], gt_answers: Sequence[Sequence[str]]) -> None:
        """Score one batch: ``predictions[i]`` (an answer string) against ``gt_answers[i]``."""
        if len(predictions) != len(gt_answers):
            raise ValueError(
                f"{len(predictions)} predictions but {len(gt_answers)} ground-truth answer lists: one list "
                "of annotator answers per prediction"
            )
        batch_total = 0.0
        for prediction, answers in zip(predictions, gt_answers):
            batch_total += vqa_accuracy(prediction, answers)
        self.total += batch_total
        self.count += len(predictions)

    def compute(self) -> Tensor:
        return self.total / self.count
