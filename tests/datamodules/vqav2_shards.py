"""A tiny VQAv2 download in the official schemas, converted by ``VQAv2Converter`` + ``write_shards``.

Shared by the VQA data and task tests on real-schema data and the converter's tests, which also build
their own downloads with its writers of the official files (the tests outside this folder put it on
``sys.path``). With ``min_answer_count=1`` the answer vocabulary is every normalised multiple-choice
answer of train + val in first-occurrence order: ``ANSWERS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from vlp.datamodules.convert.vqav2 import VQAv2Converter
from vlp.datamodules.convert.writer import write_shards

ANSWERS = ["yes", "2", "book", "no", "3", "laptop"]

# question id -> (image id, question, the ten answers as published, multiple-choice answer)
TRAIN = {
    10: (1, "Is the cat red?", ["yes"] * 10, "yes"),
    11: (1, "How many cats?", ["2"] * 8 + ["two"] * 2, "2"),
    20: (2, "What is on the table?", ["book"] * 10, "book"),
    21: (2, "Is it night?", ["no"] * 10, "no"),
}
VAL = {
    # "Yes" as written is not the class "yes" for ViLT (6 annotators -> 1); "no" by one -> 0.3
    30: (3, "Is it sunny?", ["Yes"] * 3 + ["yes"] * 6 + ["no"], "yes"),
    # "2" by two -> 0.6; "two" is not in the vocabulary as written, but is "2" for the official accuracy
    31: (3, "How many dogs?", ["2"] * 2 + ["two"] * 2 + ["3"] * 6, "3"),
    # "book" by two -> 0.6 ("the book" is not a class as written; officially it is "book")
    40: (4, "What is on the desk?", ["the book"] + ["book"] * 2 + ["laptop"] * 7, "laptop"),
}
TEST_DEV = {50: (5, "What is this?"), 51: (5, "Is it big?"), 60: (6, "How many?")}
# ViLT's targets of the val questions over ANSWERS
VAL_TARGETS = {
    30: [1.0, 0.0, 0.0, 0.3, 0.0, 0.0],
    31: [0.0, 0.6, 0.0, 0.0, 1.0, 0.0],
    40: [0.0, 0.0, 0.6, 0.0, 0.0, 1.0],
}
SPLITS = ("train", "val", "test-dev")


def questions_file(subset: str, questions: list[tuple[int, int, str]]) -> dict[str, Any]:
    """An official questions file of ``(image id, question id, question)`` rows."""
    return {
        "info": {"description": "tiny VQAv2"},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "license": {"name": "CC BY 4.0"},
        "data_subtype": subset,
        "questions": [{"image_id": i, "question": q, "question_id": qid} for i, qid, q in questions],
    }


def annotation(
    image_id: int,
    question_id: int,
    answers: list[str],
    mc: str,
    answer_type: str = "other",
    question_type: str = "what",
) -> dict[str, Any]:
    """One official annotation: the ten ``answers`` as published, the multiple-choice answer ``mc``."""
    return {
        "question_type": question_type,
        "multiple_choice_answer": mc,
        "answers": [
            {"answer": answer, "answer_confidence": "yes", "answer_id": i + 1}
            for i, answer in enumerate(answers)
        ],
        "image_id": image_id,
        "answer_type": answer_type,
        "question_id": question_id,
    }


def annotations_file(subset: str, annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "info": {"description": "tiny VQAv2"},
        "license": {"name": "CC BY 4.0"},
        "data_subtype": subset,
        "annotations": annotations,
        "data_type": "mscoco",
    }


def _questions(subset: str, questions: dict[int, tuple[Any, ...]]) -> dict[str, Any]:
    return questions_file(subset, [(entry[0], qid, entry[1]) for qid, entry in questions.items()])


def _annotations(subset: str, questions: dict[int, tuple[Any, ...]]) -> dict[str, Any]:
    rows = [annotation(image_id, qid, answers, mc) for qid, (image_id, _, answers, mc) in questions.items()]
    return annotations_file(subset, rows)


def write_raw_vqav2(root: Path) -> Path:
    """The official files and 32 x 24 JPEG images (one colour per image) under ``root``."""
    files = {
        "v2_OpenEnded_mscoco_train2014_questions.json": _questions("train2014", TRAIN),
        "v2_mscoco_train2014_annotations.json": _annotations("train2014", TRAIN),
        "v2_OpenEnded_mscoco_val2014_questions.json": _questions("val2014", VAL),
        "v2_mscoco_val2014_annotations.json": _annotations("val2014", VAL),
        "v2_OpenEnded_mscoco_test-dev2015_questions.json": _questions("test-dev2015", TEST_DEV),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_text(json.dumps(data), encoding="utf-8")
    images = {"train2014": TRAIN, "val2014": VAL, "test2015": TEST_DEV}
    for folder, questions in images.items():
        for image_id in sorted({entry[0] for entry in questions.values()}):
            path = root / folder / f"COCO_{folder}_{image_id:012d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 24), (40 * image_id % 256, 200, 90)).save(path, format="JPEG")
    return root


def converted_vqav2(folder: Path) -> Path:
    """The raw download written under ``folder/raw`` and converted into shards under ``folder/shards``
    (splits ``train``, ``val``, ``test-dev``; ``vocab.json`` answers ``ANSWERS``)."""
    raw = write_raw_vqav2(folder / "raw")
    out = folder / "shards"
    write_shards(VQAv2Converter(raw, splits=SPLITS, min_answer_count=1), out, workers=1, progress=False)
    return out
