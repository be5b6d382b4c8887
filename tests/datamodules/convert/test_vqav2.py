"""VQAv2 converter on a tiny raw folder in the official schemas (questions, annotations, COCO images)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/datamodules: the tiny VQAv2 download's writers

import vqav2_shards

from vlp.datamodules.convert.base import InputTreeError, Record
from vlp.datamodules.convert.vqa_answers import normalize_answer, vilt_answer, vilt_score
from vlp.datamodules.convert.vqav2 import VQAv2Converter

TWO = ["2", "2", "2", "two", "two", "two", "two", "two", "3", "4"]  # "2" as written by 3 annotators
YES = ["yes"] * 9 + ["no"]


def annotation(image_id: int, question_id: int, answers: list[str], mc: str, kind: str) -> dict[str, Any]:
    return vqav2_shards.annotation(
        image_id, question_id, answers, mc, kind, "how many" if kind == "number" else "is the"
    )


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def write_image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path, format="JPEG")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """Multiple-choice answers over train + val: "two" x4 (train) and "2" x4 (val) -> "2" x8 once
    normalised, "yes" x9; so "yes" is an answer at the threshold 9 and "2" only at 8.

    train: image 25 holds the four "two" questions (first in the file), image 9 six "yes" questions;
    val: image 42 three "yes" and four "2" questions, one question without annotation and one annotation
    without a question; test-dev: one question about test2015 image 1.
    """
    root = tmp_path / "vqav2"
    root.mkdir()
    train_q = [(25, 25000 + n, f"How many cats {n}?") for n in range(4)]
    train_q += [(9, 9000 + n, f"Is the sky blue {n}?") for n in range(6)]
    train_a = [annotation(25, 25000 + n, TWO, "two", "number") for n in range(4)]
    train_a += [annotation(9, 9000 + n, YES, "yes", "yes/no") for n in range(6)]
    val_q = [(42, 42000 + n, f"Is it {n}?") for n in range(3)]
    val_q += [(42, 42010 + n, f"How many {n}?") for n in range(4)]
    val_q += [(42, 42099, "Without an annotation?")]
    val_a = [annotation(42, 42000 + n, YES, "yes", "yes/no") for n in range(3)]
    val_a += [annotation(42, 42010 + n, TWO, "2", "number") for n in range(4)]
    val_a += [annotation(43, 43000, ["maybe"] * 10, "maybe", "other")]  # no question for it; counted
    write_json(
        root / "v2_OpenEnded_mscoco_train2014_questions.json",
        vqav2_shards.questions_file("train2014", train_q),
    )
    write_json(
        root / "v2_mscoco_train2014_annotations.json", vqav2_shards.annotations_file("train2014", train_a)
    )
    write_json(
        root / "v2_OpenEnded_mscoco_val2014_questions.json", vqav2_shards.questions_file("val2014", val_q)
    )
    write_json(root / "v2_mscoco_val2014_annotations.json", vqav2_shards.annotations_file("val2014", val_a))
    write_json(
        root / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
        vqav2_shards.questions_file("test-dev2015", [(1, 1000, "What is this?")]),
    )
    for folder, image_id, colour in (
        ("train2014", 9, (200, 0, 0)),
        ("train2014", 25, (0, 200, 0)),
        ("val2014", 42, (0, 0, 200)),
        ("test2015", 1, (90, 90, 90)),
    ):
        write_image(root / folder / f"COCO_{folder}_{image_id:012d}.jpg", colour)
    return root


def records(converter: VQAv2Converter, split: str) -> list[Record]:
    return list(converter.records(split))


# ---------------------------------------------------------------------------------------------- vocabulary


def test_vilt_answer_is_the_official_processing_without_commas_on_python_3_digits() -> None:
    assert vilt_answer("Two") == "2" and vilt_answer("the dog.") == "dog"
    assert vilt_answer("red,white") == "red white"  # a comma touching no space becomes a space first
    assert vilt_answer("a,b, c") == "ab c"  # ", " occurs: commas removed; "a" survives inside "ab"
    assert vilt_answer("1,000") == "1000"
    # a period before a non-ASCII digit stays (Python 3's \d), the official Python 2 code removes it
    assert vilt_answer("1.\u0663") == "1.\u0663" and normalize_answer("1.\u0663") == "1\u0663"


def test_vilt_score_steps_by_point_three_up_to_one() -> None:
    assert [vilt_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    with pytest.raises(ValueError, match="cannot be negative"):
        vilt_score(-1)


def test_vocabulary_keeps_answers_seen_at_least_min_answer_count_times(raw: Path) -> None:
    assert VQAv2Converter(raw).vocab() == {"answers": ["yes"], "answer_counts": [9], "answer_min_count": 9}
    # at 8, "two" (train) and "2" (val) are one normalised answer; first occurrence decides the order
    eight = VQAv2Converter(raw, min_answer_count=8).vocab()
    assert eight == {"answers": ["2", "yes"], "answer_counts": [8, 9], "answer_min_count": 8}


def test_vocabulary_counts_train_and_val_whatever_is_written(raw: Path) -> None:
    assert VQAv2Converter(raw, splits=["val"]).vocab()["answers"] == ["yes"]


# ------------------------------------------------------------------------------------------------ records


def test_train_samples_hold_every_question_of_their_image_with_vilt_targets(raw: Path) -> None:
    converter = VQAv2Converter(raw, min_answer_count=8)  # vocabulary ["2", "yes"]
    assert converter.size("train") == 2
    image_25, image_9 = sorted(records(converter, "train"), key=lambda r: r.key, reverse=True)
    assert [image_9.key, image_25.key] == ["000000000009", "000000000025"]
    assert image_9.images == {"jpg": raw / "train2014" / "COCO_train2014_000000000009.jpg"}
    assert image_9.json["source"] == {"dataset": "vqav2", "image_id": 9, "coco_split": "train2014"}
    assert [qa["question_id"] for qa in image_9.json["qa"]] == [9000 + n for n in range(6)]
    assert image_25.json["qa"][0] == {
        "question": "How many cats 0?",
        "question_id": 25000,
        "answers": TWO,
        "multiple_choice_answer": "two",
        "answer_type": "number",
        "question_type": "how many",
        # as ViLT: answers matched as written, so "two" (5 annotators) is not the vocabulary's "2";
        # "2" was given by 3 -> 0.9
        "answer_labels": [0],
        "answer_scores": [0.9],
    }
    assert image_9.json["qa"][0]["answer_labels"] == [1] and image_9.json["qa"][0]["answer_scores"] == [1.0]
    assert converter.dropped() == []


def test_train_questions_without_an_answer_in_the_vocabulary_are_dropped(raw: Path) -> None:
    converter = VQAv2Converter(raw)  # vocabulary ["yes"]: image 25's questions have no target
    assert [r.key for r in records(converter, "train")] == ["000000000009"]
    assert converter.dropped() == [
        (str(25000 + n), "none of its answers is in the answer vocabulary (left out of training, as ViLT)")
        for n in range(4)
    ]


def test_val_keeps_unanswerable_questions_and_lists_unmatched_entries(raw: Path) -> None:
    converter = VQAv2Converter(raw, splits=["val"])
    (image,) = records(converter, "val")
    assert len(image.json["qa"]) == 7  # the four "2" questions are kept, without targets
    assert image.json["qa"][3]["answer_labels"] == [] and image.json["qa"][3]["answers"] == TWO
    assert converter.dropped() == [
        ("42099", "no annotation for this question"),
        ("43000", "annotation without a question in v2_OpenEnded_mscoco_val2014_questions.json"),
    ]
    list(converter.records("val"))  # reading a split again does not repeat its dropped entries
    assert len(converter.dropped()) == 2


def test_test_dev_questions_need_no_annotations(raw: Path) -> None:
    converter = VQAv2Converter(raw, splits=["test-dev"])
    converter.check()
    (image,) = records(converter, "test-dev")
    assert image.images == {"jpg": raw / "test2015" / "COCO_test2015_000000000001.jpg"}
    assert image.json["qa"] == [{"question": "What is this?", "question_id": 1000}]


# ------------------------------------------------------------------------------------------------ checks


def test_missing_files_are_all_named_before_any_work(raw: Path) -> None:
    (raw / "v2_mscoco_val2014_annotations.json").unlink()
    for image in (raw / "train2014").iterdir():
        image.unlink()
    (raw / "train2014").rmdir()
    with pytest.raises(InputTreeError) as error:
        VQAv2Converter(raw).check()
    message = str(error.value)
    assert "missing 2 file(s)/folder(s)" in message
    assert str(raw / "v2_mscoco_val2014_annotations.json") in message and str(raw / "train2014") in message


def test_bad_options_and_files_are_named(raw: Path) -> None:
    with pytest.raises(ValueError, match="unknown: test2015"):
        VQAv2Converter(raw, splits=["train", "test2015"])
    with pytest.raises(ValueError, match="min_answer_count must be at least 1"):
        VQAv2Converter(raw, min_answer_count=0)
    write_json(raw / "v2_mscoco_train2014_annotations.json", {"questions": []})
    with pytest.raises(ValueError, match=r"v2_mscoco_train2014_annotations\.json has no 'annotations' list"):
        VQAv2Converter(raw).vocab()


# ------------------------------------------------------------------------------------ shards, read back


def test_shards_read_back_through_the_vqa_decoder_and_collator(raw: Path, tmp_path: Path) -> None:
    from vlp.datamodules.convert.writer import write_shards
    from vlp.datamodules.parts import Vocab
    from vlp.datamodules.tar_reader import read_shard
    from vlp.datamodules.transforms import ViltTransform
    from vlp.datamodules.vqa import VQACollator, VQADecoder

    out = tmp_path / "out"
    manifest = write_shards(VQAv2Converter(raw), out, workers=1, progress=False)
    assert {split: info.samples for split, info in manifest.splits.items()} == {"train": 1, "val": 1}
    assert len(manifest.dropped_annotations) == 6  # 4 train questions without target + 2 val entries
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab == {"answers": ["yes"], "answer_counts": [9], "answer_min_count": 9}

    decode = VQADecoder().bind(ViltTransform(32, 16), max_image_pixels=None)
    (sample,) = [decode(raw_sample) for raw_sample in read_shard(str(out / "val" / "shard-000000.tar"))]
    assert sample.key == "000000000042" and sample.orig_size == (24, 32)
    assert sample.image[2].float().mean() > sample.image[0].float().mean()  # the blue image
    collate = VQACollator().for_split(train=False, vocab=Vocab(out / "vocab.json", vocab))
    batch = collate([sample], torch.Generator().manual_seed(0))
    assert batch.keys == [f"000000000042/q{j}" for j in range(7)]
    # "yes" by 9 annotators scores 1 for the three yes/no questions; the others have no answer class
    assert batch.answers.tolist() == [[1.0]] * 3 + [[0.0]] * 4
