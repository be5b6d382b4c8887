"""VQATask on real-schema data: tiny VQAv2 shards written by ``VQAv2Converter`` (validation with the
official accuracy, test questions left out of it, predictions for the evaluation server), and shapes
validation unchanged.

The answer head is forced (last layer's weights zero, one large bias): every question gets the same
answer whatever the encoder computes, so every logged figure is exact by construction and can be
computed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import LightningDataModule, Trainer
from torch.utils.data import DataLoader
from two_process_launch import Launch
from vqa_vqav2_distributed_run import TEXT_LEN, forced_task

sys.path.insert(0, str(Path(__file__).parents[1] / "datamodules"))

from shard_helpers import data_module
from vqav2_shards import ANSWERS, TEST_DEV, VAL, VAL_TARGETS, converted_vqav2

from vlp.batch import Batch
from vlp.datamodules.decode import DecodedSample
from vlp.datamodules.parts import Vocab
from vlp.datamodules.vqa import VQACollator, VQADecoder
from vlp.metrics import vqa_accuracy

pytestmark = pytest.mark.filterwarnings("ignore")

SCRIPT = Path(__file__).with_name("vqa_vqav2_distributed_run.py")
READER = {"num_workers": 0, "batch_size": 8, "image_size": 16, "patch_size": 8}


@pytest.fixture(scope="module")
def vqav2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_vqav2(tmp_path_factory.mktemp("vqav2"))


def trainer(root: Path) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )


def vqav2_data(root: Path, **reader: Any) -> LightningDataModule:
    collator = VQACollator(max_text_len=TEXT_LEN)
    return data_module(root, VQADecoder(), collator, **READER, **reader)


@pytest.mark.parametrize("answer", ["2", "book"])
def test_validation_logs_the_official_accuracy_of_the_answer_strings(
    vqav2: Path, tmp_path: Path, answer: str
) -> None:
    run = trainer(tmp_path)
    (metrics,) = run.validate(forced_task(answer, ANSWERS), datamodule=vqav2_data(vqav2), verbose=False)
    hand = sum(vqa_accuracy(answer, answers) for _, _, answers, _ in VAL.values()) / len(VAL)
    # "2": only "How many dogs?" (two "2" + two "two" = four once processed) -> 1; "book": "the book"
    # + two "book" -> 0.9 on "What is on the desk?"
    assert hand == pytest.approx({"2": 1 / 3, "book": 0.3}[answer], abs=1e-12)
    assert run.callback_metrics["val/vqa_accuracy"] == torch.tensor(hand, dtype=torch.float32)
    # the VQA score reads ViLT's targets (0.6 for either answer, on one question of three)
    score = sum(targets[ANSWERS.index(answer)] for targets in VAL_TARGETS.values()) / len(VAL)
    assert metrics["val/vqa_score"] == pytest.approx(score, rel=1e-6)  # float32 batch mean


def test_predict_writes_the_servers_results_with_integer_question_ids(vqav2: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions"
    task = forced_task("book", ANSWERS, predict_dir=str(out))
    trainer(tmp_path).predict(task, datamodule=vqav2_data(vqav2, predict_split="test-dev"))
    text = (out / "vqa_results.json").read_text()
    assert json.loads(text) == [{"question_id": qid, "answer": "book"} for qid in sorted(TEST_DEV)]
    assert '"question_id": 50,' in text  # a json integer, as the evaluation server reads it


class ListData(LightningDataModule):
    """Fixed validation batches and an answer vocabulary, as a ShardDataModule hands them over."""

    def __init__(self, batches: list[Batch]) -> None:
        super().__init__()
        self.batches = batches
        self.vocab = {"answers": ANSWERS}

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)


def test_test_questions_are_left_out_of_validation(tmp_path: Path) -> None:
    answered = {
        "question": "how many?",
        "question_id": 1,
        "answers": ["2"] * 5 + ["two"] * 2 + ["3"] * 3,
        "answer_labels": [1, 4],
        "answer_scores": [1.0, 0.9],
    }
    unanswered = {"question": "what is it?", "question_id": 2}
    collate = VQACollator(max_text_len=TEXT_LEN).for_split(
        train=False, vocab=Vocab(lists={"answers": ANSWERS})
    )

    def batch(key: str, *qa: dict) -> Batch:
        image = torch.linspace(-1, 1, 3 * 16 * 16).reshape(3, 16, 16)
        return collate([DecodedSample(key=key, image=image, captions=[], annotation={"qa": list(qa)})])

    figures = []
    for batches in (
        [batch("a", answered)],
        [batch("a", unanswered, answered, unanswered), batch("b", unanswered)],
    ):
        run = trainer(tmp_path)
        run.validate(forced_task("3", ANSWERS), datamodule=ListData(batches), verbose=False)
        figures.append({k: float(v) for k, v in run.callback_metrics.items()})
    alone, mixed = figures
    assert set(alone) == {"val/loss", "val/vqa_loss", "val/vqa_score", "val/vqa_accuracy"}
    assert mixed == alone  # the test questions added no row to any figure
    assert alone["val/vqa_score"] == pytest.approx(0.9) and alone["val/vqa_accuracy"] == pytest.approx(0.9)


def test_shapes_validation_logs_no_official_accuracy(tiny_shapes: Path, tmp_path: Path) -> None:
    answers = json.loads((tiny_shapes / "vocab.json").read_text())["answers"]
    data = data_module(
        tiny_shapes, VQADecoder(), VQACollator(full_credit_answers=1, max_text_len=TEXT_LEN), **READER
    )
    run = trainer(tmp_path)
    run.validate(forced_task(answers[0], answers), datamodule=data, verbose=False)
    assert "val/vqa_score" in run.callback_metrics and "val/vqa_accuracy" not in run.callback_metrics


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_log_the_accuracy_of_the_whole_split(vqav2: Path, tmp_path: Path) -> None:
    """Rank 0 scores image 3's two questions, rank 1 image 4's one: the logged accuracy is the mean
    over the three questions (1/3 for "2"), not the mean of the ranks' means (1/4)."""
    result = Launch(
        SCRIPT, "ddp", tmp_path, extra=["--data", str(vqav2), "--answer", "2"], timeout=600
    ).result()
    assert result["counts"] == [2, 1]
    hand = sum(vqa_accuracy("2", answers) for _, _, answers, _ in VAL.values()) / len(VAL)
    assert result["metrics"]["val/vqa_accuracy"] == float(torch.tensor(hand, dtype=torch.float32))
