from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from shard_helpers import data_module, png_bytes, write_dataset

from vlp.datamodules.decode import DecodedSample, SkippedSample
from vlp.datamodules.parts import Vocab
from vlp.datamodules.transforms import ViltTransform
from vlp.datamodules.vqa import VQACollator, VQADecoder, answer_scores

ANSWERS = ["red", "blue", "two", "yes"]
VOCAB = Vocab(lists={"answers": ANSWERS})
INDEX = {a: i for i, a in enumerate(ANSWERS)}


def test_soft_scores_are_min_one_count_over_three() -> None:
    # ten annotators, VQAv2 style: "two" x4 -> 1, "Blue" x2 (case and spaces normalised) -> 2/3,
    # "red" x1 -> 1/3, "three" x3 is not in the vocabulary -> nothing, "yes" never said -> 0
    annotators = ["two", "two", " two", "two", "blue", "Blue ", "red", "three", "three", "three"]
    torch.testing.assert_close(answer_scores(annotators, INDEX), torch.tensor([1 / 3, 2 / 3, 1.0, 0.0]))
    # one exact answer with full credit at one annotator (the shapes recipe)
    torch.testing.assert_close(answer_scores(["yes"], INDEX, full_credit=1), torch.tensor([0.0, 0, 0, 1]))


def sample(key: str, qa: list[dict]) -> DecodedSample:
    image = torch.full((3, 8, 8), float(len(key)))
    return DecodedSample(key=key, image=image, captions=[], annotation={"qa": qa})


QA_A = [
    {"question": "what colour is it?", "answers": ["red", "red", "red"]},
    {"question": "how many shapes?", "answers": ["two", "blue"]},
]
QA_B = [{"question": "is there a square?", "answers": ["yes"]}]


def test_evaluation_rows_are_every_question_training_rows_one_per_image() -> None:
    collate = VQACollator().for_split(train=False, vocab=VOCAB)  # evaluation: every question
    batch = collate([sample("a", QA_A), SkippedSample("x", "broken"), sample("bb", QA_B)])
    assert batch.keys == ["a/q0", "a/q1", "bb/q0"]
    assert batch.num_skipped == 1 and batch.skipped_keys == ["x"]
    assert batch.captions == ["what colour is it?", "how many shapes?", "is there a square?"]
    torch.testing.assert_close(
        batch.answers, torch.tensor([[1.0, 0, 0, 0], [0, 1 / 3, 1 / 3, 0], [0, 0, 0, 1 / 3]])
    )
    assert torch.equal(batch.pixels[0], batch.pixels[1]) and batch.pixels[2, 0, 0, 0] == 2.0
    assert batch.text_ids.shape[0] == 3 and batch.text_mask.dtype == torch.bool

    one = VQACollator().for_split(train=True, vocab=VOCAB)  # training: one question per image
    chosen = set()
    for seed in range(20):
        batch = one([sample("a", QA_A), sample("bb", QA_B)], torch.Generator().manual_seed(seed))
        assert len(batch) == 2 and batch.keys[1] == "bb/q0"
        chosen.add(batch.keys[0])
    assert chosen == {"a/q0", "a/q1"}  # both questions of "a" get drawn


def test_blank_images_zero_every_pixel_and_keep_the_masks() -> None:
    batch = VQACollator(blank_images=True).for_split(train=False, vocab=VOCAB)([sample("a", QA_A)])
    assert batch.pixels.abs().sum() == 0 and batch.pixel_mask.all()


def test_decoder_skips_samples_without_usable_questions() -> None:
    decode = VQADecoder().bind(ViltTransform(32, 16))
    raw = {"__key__": "k", "png": png_bytes((1, 2, 3))}
    good = decode({**raw, "json": json.dumps({"qa": QA_B}).encode()})
    assert isinstance(good, DecodedSample)  # captions are not needed
    for qa in ([], [{"question": "?", "answers": []}], [{"question": "", "answers": ["yes"]}]):
        skipped = decode({**raw, "json": json.dumps({"qa": qa}).encode()})
        assert isinstance(skipped, SkippedSample) and "qa" in skipped.reason


def test_datamodule_reads_shapes_answers_and_refuses_a_vocab_without_them(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    dm = data_module(
        tiny_shapes, VQADecoder(), VQACollator(full_credit_answers=1), batch_size=4, num_workers=0
    )
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    vocab = json.loads((tiny_shapes / "vocab.json").read_text())["answers"]
    assert batch.answers.shape == (len(batch), len(vocab))
    assert torch.equal(batch.answers.sum(1), torch.ones(len(batch)))  # one exact answer, full credit
    assert len(batch) > 4  # every question of the 4 images

    write_dataset(tmp_path, {"train": [[]], "val": [[]]})  # vocab.json without answers
    bare = data_module(tmp_path, VQADecoder(), VQACollator(), num_workers=0)
    bare.setup("fit")
    with pytest.raises(ValueError, match=r"vocab\.json has no 'answers' list: VQA classifies over it"):
        bare.train_dataloader()
