"""VQA batches: a question per row, its answers as soft scores over ``vocab.json``'s answer list.

VQAv2 asks ten annotators per question; an answer given by ``n`` of them scores ``min(1, n / 3)``
(the VQA accuracy), and that soft score is the binary-cross-entropy target of the answer's class.
A dataset whose ``answers`` list holds one exact answer per question (shapes: the generator's
ground truth) sets ``full_credit_answers: 1``, so the true answer scores 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from vlp.batch import Batch
from vlp.datamodules.collate import DecodedSample, SkippedSample
from vlp.datamodules.finetune import FinetuneCollator, FinetuneDataModule
from vlp.datamodules.shards import MAX_IMAGE_PIXELS, SampleDecoder


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
    """:class:`~vlp.datamodules.shards.SampleDecoder` for QA: captions optional, usable ``qa`` required."""

    def __init__(
        self, transform: Callable[[Image.Image], Tensor], max_image_pixels: int | None = MAX_IMAGE_PIXELS
    ) -> None:
        super().__init__(transform, require_captions=False, max_image_pixels=max_image_pixels)

    def __call__(self, sample: dict[str, Any]) -> DecodedSample | SkippedSample:
        decoded = super().__call__(sample)
        if isinstance(decoded, DecodedSample) and not usable_questions(decoded.annotation):
            return SkippedSample(decoded.key, "no usable qa (question + list of answers)")
        return decoded


class VQACollator(FinetuneCollator):
    """One row per question: the image, the question as ``text_ids``, soft scores as ``answers``.

    With ``all_questions`` every question of every image becomes a row (evaluation: the whole split);
    otherwise one question per image, drawn at random (training: a fixed number of rows per batch).
    Row keys are ``<sample key>/q<index of the question>``.
    """

    def __init__(
        self, answers: Sequence[str], full_credit_answers: int = 3, all_questions: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not answers:
            raise ValueError("VQA needs a non-empty answer vocabulary (vocab.json 'answers')")
        self.answer_index = {normalise_answer(a): i for i, a in enumerate(answers)}
        if len(self.answer_index) != len(answers):
            raise ValueError(
                "vocab.json 'answers' holds duplicates after normalisation (lower case, stripped)"
            )
        self.full_credit_answers = full_credit_answers
        self.all_questions = all_questions

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
        pixels, pixel_mask = self.images(images)
        text_ids, text_mask = self.encode(questions)
        return Batch(
            keys=keys,
            pixels=pixels,
            pixel_mask=pixel_mask,
            text_ids=text_ids,
            text_mask=text_mask,
            answers=torch.stack(scores),
            captions=questions,
        )


class VQADataModule(FinetuneDataModule):
    """VQA batches from image shards whose json has ``qa``; the answer list is ``vocab.json``'s ``answers``.

    Training rows take one random question per image; validation and test rows are every question.

    Args:
        full_credit_answers: annotators that must agree for an answer to score 1 (VQAv2: 3).
        Others: as :class:`~vlp.datamodules.finetune.FinetuneDataModule`.
    """

    def __init__(self, root: str, full_credit_answers: int = 3, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        if full_credit_answers < 1:
            raise ValueError(f"full_credit_answers must be at least 1, got {full_credit_answers}")
        self.full_credit_answers = full_credit_answers

    @property
    def answers(self) -> list[str]:
        """The answer vocabulary (``vocab.json``'s ``answers``), once :meth:`setup` has read it."""
        answers = self.vocab.get("answers")
        if not isinstance(answers, list) or not answers:
            raise ValueError(
                f"{self.root / 'vocab.json'} has no 'answers' list: VQA classifies over it "
                "(`python -m vlp data synth shapes` writes one)"
            )
        return answers

    def decoder(self, transform: Callable[[Image.Image], Tensor]) -> VQADecoder:
        return VQADecoder(transform, self.max_image_pixels)

    def collator(self, train: bool) -> VQACollator:
        return VQACollator(
            self.answers,
            full_credit_answers=self.full_credit_answers,
            all_questions=not train,
            **self.collator_args(),
        )
