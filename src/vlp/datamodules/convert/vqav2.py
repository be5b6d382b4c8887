"""VQAv2: the official question and annotation files with the COCO images, one sample per image.

Raw layout (the official downloads unzipped into one folder)::

    ROOT/v2_OpenEnded_mscoco_train2014_questions.json     v2_mscoco_train2014_annotations.json
    ROOT/v2_OpenEnded_mscoco_val2014_questions.json       v2_mscoco_val2014_annotations.json
    ROOT/v2_OpenEnded_mscoco_test-dev2015_questions.json  (test-dev: questions only)
    ROOT/v2_OpenEnded_mscoco_test2015_questions.json      (test: questions only)
    ROOT/train2014/COCO_train2014_000000000009.jpg  ROOT/val2014/...  ROOT/test2015/...

A sample is a COCO image (key: its id, 12 digits) with every question about it, in the order of the
questions file, in its json's ``qa`` list (what :class:`~vlp.datamodules.vqa.VQADecoder` reads)::

    {"question": str, "question_id": int,
     "answers": [the 10 annotators' answers, as published],
     "multiple_choice_answer": str, "answer_type": str, "question_type": str,
     "answer_labels": [int, ...], "answer_scores": [float, ...]}

The test splits have no annotations: their entries hold ``question`` and ``question_id`` only.

The answer vocabulary is built as ViLT builds it: the ``multiple_choice_answer`` of every train and val
question, normalised as ViLT normalises it (:func:`~vlp.datamodules.convert.vqa_answers.vilt_answer`),
kept when it occurs at least ``min_answer_count`` times (9: 3,129 answers on VQAv2), in the order of first
occurrence (train, then val), so that a class index is ViLT's. ``answer_labels`` / ``answer_scores`` are
ViLT's soft targets of the question: each distinct annotator answer, as written, that is in the vocabulary,
with :func:`~vlp.datamodules.convert.vqa_answers.vilt_score` of how many annotators gave it. As ViLT, train
questions without any answer in the vocabulary are left out (listed as dropped); the val questions are
all kept, so that the official accuracy can be computed on the whole split.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlp.datamodules.convert.base import DatasetConverter, Record, chosen_splits
from vlp.datamodules.convert.vqa_answers import vilt_answer, vilt_score

__all__ = ["SPLITS", "VQAv2Converter"]


@dataclass(frozen=True)
class SplitFiles:
    """The names of one split's files: ``questions`` and ``annotations`` subsets (``None``: no
    annotations) and the COCO image folder."""

    questions: str
    annotations: str | None
    images: str


SPLITS = {
    "train": SplitFiles("train2014", "train2014", "train2014"),
    "val": SplitFiles("val2014", "val2014", "val2014"),
    "test-dev": SplitFiles("test-dev2015", None, "test2015"),
    "test": SplitFiles("test2015", None, "test2015"),
}
VOCAB_SPLITS = ("train", "val")
"""The splits whose annotations the answer vocabulary is counted over (ViLT's)."""
DROP_UNANSWERABLE = ("train",)
"""Splits whose questions without any answer in the vocabulary are left out (ViLT's training set)."""


@dataclass
class ImageQuestions:
    """One image of a split and its questions (``qa`` entries), in the order of the questions file."""

    image_id: int
    qa: list[dict[str, Any]]


class VQAv2Converter(DatasetConverter):
    """VQAv2 questions and annotations + COCO images -> one sample per image (see the module docstring).

    Args:
        splits: the splits written, of ``train``, ``val``, ``test-dev`` and ``test``. The answer
            vocabulary is always counted over the train and val annotations, whatever is written.
        min_answer_count: the times a (normalised) ``multiple_choice_answer`` must occur over train + val
            to be in the answer vocabulary (ViLT: 9).
    """

    name = "vqav2"

    def __init__(
        self, root: Path, splits: Sequence[str] = ("train", "val"), min_answer_count: int = 9
    ) -> None:
        splits = chosen_splits(self.name, splits, SPLITS)
        if min_answer_count < 1:
            raise ValueError(f"vqav2: min_answer_count must be at least 1, got {min_answer_count}")
        super().__init__(root, splits=splits, min_answer_count=min_answer_count)
        self.split_names = splits
        self.min_answer_count = min_answer_count
        self._answers: dict[str, int] | None = None  # answer -> occurrences, vocabulary order
        self._images: dict[str, list[ImageQuestions]] = {}  # read by size(), handed to records()
        self._dropped: dict[str, list[tuple[str, str]]] = {}

    # ------------------------------------------------------------------------------------------ files

    def questions_file(self, split: str) -> Path:
        return self.root / f"v2_OpenEnded_mscoco_{SPLITS[split].questions}_questions.json"

    def annotations_file(self, split: str) -> Path | None:
        """``None`` for the test splits, which have no annotations."""
        subset = SPLITS[split].annotations
        return None if subset is None else self.root / f"v2_mscoco_{subset}_annotations.json"

    def vocab_files(self) -> list[Path]:
        """The annotation files the answer vocabulary is counted over."""
        return [
            self.root / f"v2_mscoco_{SPLITS[split].annotations}_annotations.json" for split in VOCAB_SPLITS
        ]

    def image_file(self, split: str, image_id: int) -> Path:
        folder = SPLITS[split].images
        return self.root / folder / f"COCO_{folder}_{image_id:012d}.jpg"

    def annotation_files(self) -> list[Path]:
        files: list[Path | None] = [*self.vocab_files()]
        for split in self.split_names:
            files += [self.questions_file(split), self.annotations_file(split)]
        return list(dict.fromkeys(path for path in files if path is not None))

    def required(self) -> list[Path]:
        folders = [self.root / SPLITS[split].images for split in self.split_names]
        return [*self.annotation_files(), *dict.fromkeys(folders)]

    def layout(self) -> str:
        return """
ROOT/v2_OpenEnded_mscoco_{train2014,val2014,test-dev2015,test2015}_questions.json
ROOT/v2_mscoco_{train2014,val2014}_annotations.json   (both always: the answer vocabulary)
ROOT/{train2014,val2014,test2015}/COCO_<folder>_<12-digit image id>.jpg
"""

    def splits(self) -> list[str]:
        return list(self.split_names)

    # ------------------------------------------------------------------------------------ vocabulary

    def answer_counts(self) -> dict[str, int]:
        """The vocabulary: normalised answer -> its occurrences over train + val, in ViLT's order."""
        if self._answers is None:
            counts: Counter[str] = Counter()
            for path in self.vocab_files():
                for index, annotation in enumerate(load_list(path, "annotations")):
                    answer = (
                        annotation.get("multiple_choice_answer") if isinstance(annotation, dict) else None
                    )
                    if not isinstance(answer, str):
                        raise ValueError(
                            f"{path}: annotations[{index}] has no 'multiple_choice_answer' string; is it the "
                            "official VQAv2 annotation file?"
                        )
                    counts[vilt_answer(answer)] += 1
            self._answers = {a: n for a, n in counts.items() if n >= self.min_answer_count}
        return self._answers

    def vocab(self) -> dict[str, Any]:
        """``answers`` (the classes, in index order), ``answer_counts`` (occurrences of each over train +
        val) and ``answer_min_count`` (the threshold they passed)."""
        counts = self.answer_counts()
        return {
            "answers": list(counts),
            "answer_counts": list(counts.values()),
            "answer_min_count": self.min_answer_count,
        }

    # --------------------------------------------------------------------------------------- records

    def size(self, split: str) -> int:
        if split not in self._images:
            self._images[split] = self._read(split)
        return len(self._images[split])

    def records(self, split: str) -> Iterator[Record]:
        images = self._images.pop(split, None)
        if images is None:
            images = self._read(split)
        folder = SPLITS[split].images
        for image in images:
            yield Record(
                key=f"{image.image_id:012d}",
                json={
                    "source": {"dataset": "vqav2", "image_id": image.image_id, "coco_split": folder},
                    "qa": image.qa,
                },
                images={"jpg": self.image_file(split, image.image_id)},
            )

    def dropped(self) -> list[tuple[str, str]]:
        return [entry for split in self.split_names for entry in self._dropped.get(split, [])]

    def _read(self, split: str) -> list[ImageQuestions]:
        """The split's images with their questions, by image id; what is left out goes to dropped()."""
        dropped: list[tuple[str, str]] = []
        questions_path = self.questions_file(split)
        annotations_path = self.annotations_file(split)
        annotations: dict[int, dict[str, Any]] | None = None
        if annotations_path is not None:
            annotations = by_question_id(load_list(annotations_path, "annotations"), annotations_path)
        vocabulary = {answer: label for label, answer in enumerate(self.answer_counts())}
        images: dict[int, ImageQuestions] = {}
        for index, question in enumerate(load_list(questions_path, "questions")):
            entry = question_entry(question)
            if isinstance(entry, str):
                dropped.append((f"{questions_path.name}:questions[{index}]", entry))
                continue
            image_id, qa = entry
            if annotations is not None:
                reason = add_annotation(qa, annotations.pop(qa["question_id"], None), vocabulary)
                if reason is None and split in DROP_UNANSWERABLE and not qa["answer_labels"]:
                    reason = "none of its answers is in the answer vocabulary (left out of training, as ViLT)"
                if reason is not None:
                    dropped.append((str(qa["question_id"]), reason))
                    continue
            images.setdefault(image_id, ImageQuestions(image_id, [])).qa.append(qa)
        for question_id in annotations or {}:
            dropped.append((str(question_id), f"annotation without a question in {questions_path.name}"))
        self._dropped[split] = dropped
        return [images[image_id] for image_id in sorted(images)]


def load_list(path: Path, key: str) -> list[Any]:
    """The list under ``key`` of the json file ``path``; a ``ValueError`` naming the file otherwise."""
    try:
        with path.open(encoding="utf-8") as stream:
            data = json.load(stream)
    except ValueError as exn:
        raise ValueError(f"{path} is not readable json: {exn}") from None
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{path} has no {key!r} list; is it the official VQAv2 file of that name?")
    return items


def by_question_id(annotations: list[Any], path: Path) -> dict[int, dict[str, Any]]:
    """The annotations by ``question_id``; a ``ValueError`` naming the file for one without an id."""
    found: dict[int, dict[str, Any]] = {}
    for index, annotation in enumerate(annotations):
        question_id = annotation.get("question_id") if isinstance(annotation, dict) else None
        if not isinstance(question_id, int):
            raise ValueError(f"{path}: annotations[{index}] has no integer 'question_id'")
        found[question_id] = annotation
    return found


def question_entry(question: Any) -> tuple[int, dict[str, Any]] | str:
    """``(image id, qa entry)`` of a questions-file entry, or why it cannot be used."""
    if not isinstance(question, dict):
        return "not a json object"
    image_id, question_id, text = (
        question.get("image_id"),
        question.get("question_id"),
        question.get("question"),
    )
    if not isinstance(image_id, int) or not isinstance(question_id, int):
        return "no integer 'image_id' and 'question_id'"
    if not isinstance(text, str) or not text.strip():
        return f"question {question_id}: no 'question' text"
    return image_id, {"question": text, "question_id": question_id}


def add_annotation(
    qa: dict[str, Any], annotation: dict[str, Any] | None, vocabulary: dict[str, int]
) -> str | None:
    """Fill ``qa`` from the question's annotation (answers, types, ViLT's soft targets); why it cannot
    be used, else ``None``."""
    if annotation is None:
        return "no annotation for this question"
    answers = annotation.get("answers")
    if (
        not isinstance(answers, list)
        or not answers
        or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers)
    ):
        return "its annotation has no list of {'answer': str} answers"
    qa["answers"] = [a["answer"] for a in answers]
    for name in ("multiple_choice_answer", "answer_type", "question_type"):
        if isinstance(annotation.get(name), str):
            qa[name] = annotation[name]
    # ViLT matches each annotator's answer as written (not normalised) against the vocabulary.
    counts = Counter(qa["answers"])
    known = [answer for answer in counts if answer in vocabulary]
    qa["answer_labels"] = [vocabulary[answer] for answer in known]
    qa["answer_scores"] = [vilt_score(counts[answer]) for answer in known]
    return None
