"""VQA batches of real-schema data: VQAv2 shards written by ``VQAv2Converter``, read through the
``ShardDataModule`` pipeline (test questions, ViLT's targets, annotators' answers, question ids), and the
shapes batches left as they were."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from shard_helpers import data_module, png_bytes
from vqav2_shards import ANSWERS, TEST_DEV, VAL, VAL_TARGETS, converted_vqav2

from vlp.batch import Batch
from vlp.datamodules.decode import DecodedSample, SkippedSample
from vlp.datamodules.parts import Vocab
from vlp.datamodules.transforms import ViltTransform
from vlp.datamodules.vqa import VQACollator, VQADecoder, answer_scores, normalise_answer

READER = {"num_workers": 0, "batch_size": 8, "image_size": 16, "patch_size": 8}


@pytest.fixture(scope="module")
def vqav2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_vqav2(tmp_path_factory.mktemp("vqav2"))


def first_batch(root: Path, split: str, train: bool = False, **collator: object) -> Batch:
    dm = data_module(
        root, VQADecoder(), VQACollator(**collator), train_split=split, val_split=split, **READER
    )
    dm.setup("fit")
    return next(iter(dm.train_dataloader() if train else dm.val_dataloader()))


def test_test_questions_are_kept_for_predict_with_their_integer_ids(vqav2: Path) -> None:
    dm = data_module(vqav2, VQADecoder(), VQACollator(), predict_split="test-dev", **READER)
    dm.setup("predict")
    (batch,) = list(dm.predict_dataloader())
    assert batch.num_skipped == 0
    assert batch.question_ids == list(TEST_DEV)  # every test-dev question, none dropped
    assert batch.captions == [question for _, question in TEST_DEV.values()]
    assert batch.keys == ["000000000005/q0", "000000000005/q1", "000000000006/q0"]
    assert torch.equal(batch.answers, torch.zeros(3, len(ANSWERS)))  # no target
    assert batch.references == [[], [], []]  # nothing for the official accuracy to compare with


def test_a_training_batch_skips_images_with_test_questions_only(vqav2: Path) -> None:
    batch = first_batch(vqav2, "test-dev", train=True)
    assert len(batch) == 0 and batch.num_skipped == 2
    assert sorted(batch.skipped_keys) == ["000000000005", "000000000006"]


def test_converted_questions_score_vilts_targets_and_carry_the_annotators_answers(vqav2: Path) -> None:
    batch = first_batch(vqav2, "val")
    assert batch.question_ids == list(VAL)
    # ViLT's exact targets: 0.3 and 0.6, not the 1/3 and 2/3 of min(1, n / 3)
    assert batch.answers.tolist() == torch.tensor(list(VAL_TARGETS.values())).tolist()
    counted = torch.stack(
        [answer_scores(answers, {a: i for i, a in enumerate(ANSWERS)}) for _, _, answers, _ in VAL.values()]
    )
    assert not torch.equal(batch.answers, counted)
    assert batch.references == [answers for _, _, answers, _ in VAL.values()]  # as published, all ten

    train = first_batch(vqav2, "train", train=True)
    assert len(train) == 2 and train.references is not None  # one answered question per image
    assert all(len(answers) == 10 for answers in train.references)


def test_shapes_targets_are_min_one_count_over_full_credit_without_references(tiny_shapes: Path) -> None:
    dm = data_module(
        tiny_shapes, VQADecoder(), VQACollator(full_credit_answers=1), batch_size=4, num_workers=0
    )
    dm.setup("fit")
    vocab = json.loads((tiny_shapes / "vocab.json").read_text())["answers"]
    index = {normalise_answer(a): i for i, a in enumerate(vocab)}
    batch = next(iter(dm.val_dataloader()))
    assert batch.references is None and batch.question_ids is None
    samples = {}
    for shard in sorted((tiny_shapes / "val").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    samples[member.name.removesuffix(".json")] = json.loads(tar.extractfile(member).read())
    expected = []
    for key in batch.keys:
        sample_key, question = key.rsplit("/q", 1)
        answers = samples[sample_key]["qa"][int(question)]["answers"]
        expected.append(answer_scores(answers, index, full_credit=1))
    assert torch.equal(batch.answers, torch.stack(expected))


# ------------------------------------------------------------------------- qa entries, one by one

VOCAB = Vocab(lists={"answers": ANSWERS})
ANSWERED = {"question": "is it?", "answers": ["yes"] * 4 + ["no"] * 6}
TEST_QUESTION = {"question": "what is it?", "question_id": 7}


def sample(key: str, qa: list[dict]) -> DecodedSample:
    return DecodedSample(key=key, image=torch.zeros(3, 8, 8), captions=[], annotation={"qa": qa})


def test_the_decoder_keeps_test_questions_and_still_refuses_broken_entries() -> None:
    decode = VQADecoder().bind(ViltTransform(32, 16), None, None)
    raw = {"__key__": "k", "png": png_bytes((1, 2, 3))}

    def decoded(qa: list[dict]) -> object:
        return decode({**raw, "json": json.dumps({"qa": qa}).encode()})

    assert isinstance(decoded([TEST_QUESTION]), DecodedSample)
    broken = (
        [{**ANSWERED, "answer_labels": [0]}],  # labels without scores
        [{**ANSWERED, "answer_labels": [0, 1], "answer_scores": [1.0]}],  # lengths differ
        [{**ANSWERED, "answer_labels": [0], "answer_scores": [1.5]}],  # a score above 1
        [{**TEST_QUESTION, "answer_labels": [], "answer_scores": []}],  # targets without answers
        [{"question": "?", "answers": []}],  # an answers key, but empty
    )
    for qa in broken:
        skipped = decoded(qa)
        assert isinstance(skipped, SkippedSample) and "qa" in skipped.reason, qa


def test_training_draws_answered_questions_only_and_evaluation_keeps_all() -> None:
    qa = [TEST_QUESTION, ANSWERED, TEST_QUESTION]
    train = VQACollator().for_split(train=True, vocab=VOCAB)
    for seed in range(8):
        batch = train([sample("a", qa)], torch.Generator().manual_seed(seed))
        assert batch.keys == ["a/q1"] and batch.question_ids is None  # the drawn question has no id
        assert batch.references is None  # a counted-targets question alone: no official accuracy
    evaluation = VQACollator().for_split(train=False, vocab=VOCAB)([sample("a", qa)])
    assert evaluation.keys == ["a/q0", "a/q1", "a/q2"]
    assert evaluation.question_ids == [7, None, 7]
    assert evaluation.references == [[], ANSWERED["answers"], []]
    # counted targets (no ViLT targets in the entry): "yes" x4 -> 1, "no" x6 -> 1
    assert evaluation.answers[1].tolist() == [1.0, 0, 0, 1.0, 0, 0]


def test_vilt_targets_outside_the_vocabulary_name_the_sample() -> None:
    entry = {**ANSWERED, "answer_labels": [6], "answer_scores": [1.0]}
    collate = VQACollator().for_split(train=False, vocab=VOCAB)
    with pytest.raises(
        ValueError, match=r"sample a: answer_labels \[6\] are outside vocab\.json's 6 answers"
    ):
        collate([sample("a", [entry])])
