"""VQA batches: a question per row, its answers as soft scores over ``vocab.json``'s answer list.

VQAv2 asks ten annotators per question; an answer given by ``n`` of them scores ``min(1, n / 3)``
(the VQA accuracy), and that soft score is the binary-cross-entropy target of the answer's class.
A dataset whose ``answers`` list holds one exact answer per question (shapes: the generator's
ground truth) sets ``full_credit_answers: 1``, so the true answer scores 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Self

import torch
from torch import Tensor

from vlp.batch import Batch
from vlp.datamodules.decode import DecodedSample, SampleDecoder, Unusable
from vlp.datamodules.finetune import FinetuneCollator
from vlp.datamodules.parts import Decoder, Vocab


def normalise_answer(answer: str) -> str:
    """Lower case, surrounding white space removed (shapes answers are already in this form)."""
    return answer.strip().lower()


def answer_scores(annotator_answers: Sequence[str], index: dict[str, int], full_credit: int = 3) -> Tensor:
    """``[len(index)]`` float soft scores: each distinct answer given ``n`` times scores
    ``min(1, n / full_credit)``; answers outside the vocabulary score nothing."""
    if full_credit < 1:
        raise ValueError(f"full_credit must be at least 1, got {full_credit}")
    scores = torch.zeros(len(index))
    for answer, count in Counter(normalise_answer(a) for a in annotator_answers).items():
        if answer in index:
            scores[index[answer]] = min(1.0, count / full_credit)
    return scores


def usable_questions(annotation: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``qa`` entries with a non-empty question string and a list of string answers."""
    qa = annotation.get("qa")
    if not isinstance(qa, list):
        return []
    return [
        entry
        for entry in qa
        if isinstance(entry, dict)
        and isinstance(entry.get("question"), str)
        and entry["question"].strip()
        and isinstance(entry.get("answers"), list)
        and entry["answers"]
        and all(isinstance(a, str) for a in entry["answers"])
    ]


class VQADecoder(SampleDecoder):
    """:class:`~vlp.datamodules.decode.SampleDecoder` for QA: captions optional, usable ``qa`` required."""

    def __init__(self) -> None:
        super().__init__(require_captions=False)

    def decode(self, key: str, sample: dict[str, Any]) -> DecodedSample:
        decoded = super().decode(key, sample)
        if not usable_questions(decoded.annotation):
            raise Unusable("no usable qa (question + list of answers)")
        return decoded


class VQACollator(FinetuneCollator):
    """One row per question: the image, the question as ``text_ids``, soft scores as ``answers``.

    The answer classes are ``vocab.json``'s ``answers`` (handed over by :meth:`for_split`). Training
    takes one question per image, drawn at random (a fixed number of rows per batch); validation and
    test take every question of every image (the whole split). Row keys are
    ``<sample key>/q<index of the question>``.

    Args:
        full_credit_answers: annotators that must agree for an answer to score 1 (VQAv2: 3).
        Others: as :class:`~vlp.datamodules.finetune.FinetuneCollator`.
    """

    def __init__(self, full_credit_answers: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if full_credit_answers < 1:
            raise ValueError(f"full_credit_answers must be at least 1, got {full_credit_answers}")
        self.full_credit_answers = full_credit_answers
        # the split's, handed over by for_split
        self.answer_index: dict[str, int] = {}
        self.all_questions = False

    def decoder_type(self) -> type[Decoder]:
        return VQADecoder

    def for_split(self, train: bool, seed: int = 0, vocab: Vocab | None = None) -> Self:
        vocab = vocab or Vocab()
        answers = vocab.words("answers", needed_for="VQA classifies over it")
        answer_index = {normalise_answer(a): i for i, a in enumerate(answers)}
        if len(answer_index) != len(answers):
            raise ValueError(
                f"{vocab.path}: 'answers' holds duplicates after normalisation (lower case, stripped)"
            )
        bound = super().for_split(train, seed, vocab)
        bound.answer_index = answer_index
        bound.all_questions = not train
        return bound

    def collate(self, samples: list[DecodedSample], generator: torch.Generator) -> Batch:
        keys, images, questions, scores = [], [], [], []
        for sample in samples:
            qa = usable_questions(sample.annotation)
            chosen = (
                range(len(qa))
                if self.all_questions
                else [int(torch.randint(len(qa), (1,), generator=generator))]
            )
            for j in chosen:
                keys.append(f"{sample.key}/q{j}")
                images.append(sample.image)
                questions.append(qa[j]["question"])
                scores.append(answer_scores(qa[j]["answers"], self.answer_index, self.full_credit_answers))
        return self.text_image_batch(keys, images, questions, answers=torch.stack(scores))
