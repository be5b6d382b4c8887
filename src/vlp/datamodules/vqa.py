"""VQA batches: a question per row, its answers as soft scores over ``vocab.json``'s answer list.

A ``qa`` entry is a question with its annotators' ``answers``, or a question alone: the test-dev and test
questions of VQAv2 (no ``answers`` key), which are kept for ``predict`` and left out of training.

Soft targets come in two kinds, whichever the entry carries:

* **ViLT's exact targets** (``answer_labels`` + ``answer_scores``, written by
  :class:`~vlp.datamodules.convert.vqav2.VQAv2Converter`): the listed answer classes score as listed,
  0.3, 0.6, 0.9 or 1 for an answer given by 1, 2, 3 or at least 4 of the ten annotators, each answer
  matched *as written* against ViLT's normalised vocabulary (so "two" does not score the class "2");
* **answer counts** (any other data, the shapes dataset among them): an answer given by ``n`` annotators
  scores ``min(1, n / full_credit_answers)`` (VQAv2: 3, so 1/3 and 2/3 where ViLT has 0.3 and 0.6),
  answers lower-cased and stripped before they are looked up. A dataset whose ``answers`` list holds one
  exact answer per question (shapes: the generator's ground truth) sets ``full_credit_answers: 1``, so
  the true answer scores 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Self

import torch
from torch import Tensor

from vlp.batch import Batch
from vlp.datamodules.decode import DecodedSample, SampleDecoder, SkippedSample, Unusable
from vlp.datamodules.finetune import FinetuneCollator
from vlp.datamodules.parts import Decoder, Vocab

NO_ANSWERED_QUESTION = "no question with answers (test questions train nothing)"


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


def is_answered(entry: dict[str, Any]) -> bool:
    """Whether a usable ``qa`` entry has answers (a test question has none)."""
    return "answers" in entry


def has_vilt_targets(entry: dict[str, Any]) -> bool:
    """Whether a usable ``qa`` entry carries ViLT's targets (``answer_labels`` + ``answer_scores``)."""
    return "answer_labels" in entry


def _valid_targets(entry: dict[str, Any]) -> bool:
    """No target keys, or both as lists of the same length: integer labels, scores in [0, 1]."""
    labels, scores = entry.get("answer_labels"), entry.get("answer_scores")
    if labels is None and scores is None:
        return True
    return (
        isinstance(labels, list)
        and isinstance(scores, list)
        and len(labels) == len(scores)
        and all(isinstance(label, int) and not isinstance(label, bool) and label >= 0 for label in labels)
        and all(
            isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1
            for score in scores
        )
    )


def _usable(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    if not isinstance(entry.get("question"), str) or not entry["question"].strip():
        return False
    if not is_answered(entry):  # a test question: nothing to score it with
        return "answer_labels" not in entry and "answer_scores" not in entry
    answers = entry["answers"]
    return (
        isinstance(answers, list)
        and bool(answers)
        and all(isinstance(a, str) for a in answers)
        and _valid_targets(entry)
    )


def usable_questions(annotation: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``qa`` entries with a non-empty question string and either a non-empty list of string
    ``answers`` (with well-formed ViLT targets, if any) or no ``answers`` key at all (a test question).
    An ``answers`` key holding anything else (an empty list, non-strings) makes the entry unusable."""
    qa = annotation.get("qa")
    if not isinstance(qa, list):
        return []
    return [entry for entry in qa if _usable(entry)]


def question_id(entry: dict[str, Any]) -> int | None:
    """The entry's integer ``question_id`` (VQAv2's), else ``None``."""
    value = entry.get("question_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class VQADecoder(SampleDecoder):
    """:class:`~vlp.datamodules.decode.SampleDecoder` for QA: captions optional, usable ``qa`` required
    (:func:`usable_questions`: test questions without answers count)."""

    def __init__(self) -> None:
        super().__init__(require_captions=False)

    def decode(self, key: str, sample: dict[str, Any]) -> DecodedSample:
        decoded = super().decode(key, sample)
        if not usable_questions(decoded.annotation):
            raise Unusable("no usable qa (a question with a list of answers, or a test question alone)")
        return decoded


class VQACollator(FinetuneCollator):
    """One row per question: the image, the question as ``text_ids``, soft scores as ``answers``.

    The answer classes are ``vocab.json``'s ``answers`` (handed over by :meth:`for_split`). Training
    takes one *answered* question per image, drawn at random (a fixed number of rows per batch); an image
    with test questions only is skipped and counted (``Batch.num_skipped``). Validation, test and predict
    take every question of every image (the whole split), test questions included: their ``answers`` row
    is all zeros, and :class:`~vlp.tasks.vqa.VQATask` leaves them out of validation and test (it scores
    the answered rows only) while ``predict`` answers them. Row keys are
    ``<sample key>/q<index of the question among the usable ones>``.

    The targets of a question are ViLT's exact ones when its entry carries ``answer_labels`` and
    ``answer_scores`` (data written by :class:`~vlp.datamodules.convert.vqav2.VQAv2Converter`: 0.3, 0.6,
    0.9, 1 for 1, 2, 3, 4+ annotators, answers matched as written), else ``min(1, n /
    full_credit_answers)`` over the normalised answers (see the module docstring).

    When a batch holds a question with ViLT's targets or without answers (real VQAv2 data),
    ``Batch.references`` carries each row's annotators' answers as published (``[]`` for a test question),
    which the task scores with the official accuracy; shapes batches leave it ``None``.
    ``Batch.question_ids`` carries each row's integer ``question_id`` (``None`` where an entry has none)
    when any row has one, else ``None``.

    Args:
        full_credit_answers: annotators that must agree for an answer to score 1 (VQAv2: 3), for entries
            without ViLT's targets.
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

    def __call__(self, samples: Sequence[Any], generator: torch.Generator | None = None) -> Batch:
        """As :class:`~vlp.datamodules.collate.SampleCollator`; in training, an image without an
        answered question becomes a counted skip."""
        if not self.all_questions:
            samples = [
                SkippedSample(s.key, NO_ANSWERED_QUESTION)
                if isinstance(s, DecodedSample) and not any(map(is_answered, usable_questions(s.annotation)))
                else s
                for s in samples
            ]
        return super().__call__(samples, generator)

    def targets(self, entry: dict[str, Any], key: str) -> Tensor:
        """``[num answers]`` soft scores of one question (zeros for a test question)."""
        scores = torch.zeros(len(self.answer_index))
        if has_vilt_targets(entry):
            labels = entry["answer_labels"]
            outside = [label for label in labels if label >= len(scores)]
            if outside:
                raise ValueError(
                    f"sample {key}: answer_labels {outside} are outside vocab.json's {len(scores)} answers; "
                    "read converted shards with the vocab.json written beside them"
                )
            scores[labels] = torch.tensor(entry["answer_scores"], dtype=scores.dtype)
            return scores
        if is_answered(entry):
            return answer_scores(entry["answers"], self.answer_index, self.full_credit_answers)
        return scores

    def collate(self, samples: list[DecodedSample], generator: torch.Generator) -> Batch:
        keys, images, questions, scores, entries = [], [], [], [], []
        for sample in samples:
            qa = usable_questions(sample.annotation)
            if self.all_questions:
                chosen: Sequence[int] = range(len(qa))
            else:
                answered = [j for j, entry in enumerate(qa) if is_answered(entry)]
                chosen = [answered[int(torch.randint(len(answered), (1,), generator=generator))]]
            for j in chosen:
                keys.append(f"{sample.key}/q{j}")
                images.append(sample.image)
                questions.append(qa[j]["question"])
                scores.append(self.targets(qa[j], sample.key))
                entries.append(qa[j])
        fields: dict[str, Any] = {"answers": torch.stack(scores)}
        if any(has_vilt_targets(e) or not is_answered(e) for e in entries):
            fields["references"] = [list(e["answers"]) if is_answered(e) else [] for e in entries]
        ids = [question_id(e) for e in entries]
        if any(i is not None for i in ids):
            fields["question_ids"] = ids
        return self.text_image_batch(keys, images, questions, **fields)
