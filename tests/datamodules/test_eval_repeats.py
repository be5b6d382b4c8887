"""Validation and test batches are the same on every pass, in every run with the same seed, after a resume.

Evaluation streams read a fixed epoch: order, ITM negatives, MLM masks, caption choices and augmentation
are drawn from coordinates that do not include the training epoch. Training batches still change every epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch
from shard_helpers import data_module

from vlp.batch import Batch, Targets
from vlp.datamodules.collate import PretrainCollator
from vlp.datamodules.decode import SampleDecoder
from vlp.datamodules.e2e import E2ECollator, ObjectDecoder
from vlp.datamodules.pairs import PairCollator, PairDecoder
from vlp.datamodules.retrieval import RetrievalCollator
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.vqa import VQACollator, VQADecoder

COMMON = {
    "batch_size": 4,
    "num_workers": 2,
    "seed": 7,
    "randaugment": True,
}
PAIR_SPLITS = {"train_split": "pairs_train", "val_split": "pairs_val", "test_split": "pairs_test"}

KINDS: dict[str, Callable[[str], ShardDataModule]] = {
    "pretrain": lambda root: data_module(root, collator=PretrainCollator(mlm_probability=0.5), **COMMON),
    "pretrain-grounded": lambda root: data_module(
        root,
        collator=PretrainCollator(
            mlm_probability=0.15, grounded_mask_probability=0.5, whole_word_masking=True
        ),
        **COMMON,
    ),
    "e2e": lambda root: data_module(root, ObjectDecoder(), E2ECollator(), **COMMON),
    "e2e-blind": lambda root: data_module(
        root, ObjectDecoder(), E2ECollator(shuffle_images=True, shuffle_eval_images=True), **COMMON
    ),
    "vqa": lambda root: data_module(root, VQADecoder(), VQACollator(full_credit_answers=1), **COMMON),
    "pairs": lambda root: data_module(root, PairDecoder(), PairCollator(), **PAIR_SPLITS, **COMMON),
    "retrieval": lambda root: data_module(root, SampleDecoder(), RetrievalCollator(), **COMMON),
    "text-to-image": lambda root: data_module(
        root,
        SampleDecoder(),
        E2ECollator(targets=False, itm=False, mlm_probability=0.0),
        predict_split="test",
        **COMMON,
    ),
    "finetune": lambda root: data_module(
        root, collator=PretrainCollator(mlm_probability=0.0, itm=False), **COMMON
    ),
}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, Targets):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(Targets))
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def assert_same_batches(first: list[Batch], second: list[Batch]) -> None:
    assert len(first) == len(second) > 0
    for x, y in zip(first, second, strict=True):
        for f in fields(Batch):
            assert same(getattr(x, f.name), getattr(y, f.name)), f.name


def ready(kind: str, root: Path) -> ShardDataModule:
    dm = KINDS[kind](str(root))
    dm.setup("fit")
    return dm


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", list(KINDS))
def test_evaluation_batches_repeat_and_training_batches_change(kind: str, tiny_shapes: Path) -> None:
    dm = ready(kind, tiny_shapes)
    train = dm.train_dataloader()
    list(train)  # a training epoch between the evaluations, as in a run
    val = dm.val_dataloader()
    first = list(val)
    list(train)
    assert_same_batches(first, list(val))
    assert_same_batches(first, list(ready(kind, tiny_shapes).val_dataloader()))  # another run, same seed
    test = dm.test_dataloader()
    assert_same_batches(list(test), list(test))

    epochs = [list(train) for _ in range(2)]
    assert [b.keys for b in epochs[0]] != [b.keys for b in epochs[1]]


def test_a_loaded_training_position_does_not_move_evaluation(tiny_shapes: Path) -> None:
    dm = ready("pretrain", tiny_shapes)
    val = dm.val_dataloader()
    first = list(val)
    val.load_state_dict(
        {"epoch": 5, "consumed": {0: 1}, "next_worker": 1, "num_workers": 2, "finished": False}
    )
    assert_same_batches(first, list(val))


def test_predict_batches_repeat(tiny_shapes: Path) -> None:
    dm = ready("text-to-image", tiny_shapes)
    predict = dm.predict_dataloader()
    assert_same_batches(list(predict), list(predict))
