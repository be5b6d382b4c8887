"""Exact resume through Lightning: optimiser, schedule, step counters and the data position."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vlp.batch import Batch
from vlp.datamodules.collate import PretrainCollator
from vlp.datamodules.decode import SampleDecoder
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.transforms import ViltTransform
from vlp.models.embedders.text import TextEmbedder
from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.layers.heads import ITMHead, MLMHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.objectives import ITMObjective, MLMObjective
from vlp.tasks import PretrainTask

sys.path.insert(0, str(Path(__file__).parent / "datamodules"))
from shard_helpers import shards_of, write_dataset

MAX_STEPS = 12  # two loader workers x 4 batches = 8 batches per epoch: the run crosses an epoch


def make_task() -> PretrainTask:
    """Dropout and patch sampling draw from the global RNG: an exact resume must restore it."""
    dim = 32
    model = ViLT(
        TextEmbedder(dim=dim, max_len=16),
        ViTPatchEmbedder(dim=dim, patch_size=16, pos_grid=2, max_image_len=3),
        TransformerEncoder(dim=dim, depth=2, num_heads=4, drop=0.1),
    )
    objectives = {"mlm": MLMObjective(MLMHead(dim)), "itm": ITMObjective(ITMHead(dim))}
    return PretrainTask(model, objectives, lr=1e-3, warmup=3)


def make_data(root: Path) -> ShardDataModule:
    return ShardDataModule(
        str(root),
        transform=ViltTransform(32, 16, randaugment=True),
        decoder=SampleDecoder(),
        collator=PretrainCollator(max_text_len=16),
        batch_size=4,
        num_workers=2,
        shuffle_buffer=6,
        seed=3,
    )


class KeyRecorder(L.Callback):
    def __init__(self) -> None:
        self.keys: list[list[str]] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Batch, idx: int
    ) -> None:
        self.keys.append(list(batch.keys))


class StopAfter(L.Callback):
    """Save a checkpoint after ``step`` optimiser steps and stop, like a preempted job."""

    def __init__(self, step: int, path: Path) -> None:
        self.step = step
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def fit(root: Path, callbacks: list[L.Callback], ckpt_path: Path | None = None, seed: int = 0) -> L.Trainer:
    L.seed_everything(seed)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=MAX_STEPS,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(make_task(), make_data(root), ckpt_path=ckpt_path)
    return trainer


def test_resumed_run_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    """Preempted after 5 steps (odd, so the next batch comes from loader worker 1) and resumed in a
    fresh task and data module: the same sample keys in the same order, across the epoch boundary at
    step 8, and the same final weights as a run that was never stopped."""
    root = tmp_path / "data"
    write_dataset(root, {"train": shards_of([7, 7, 7, 7]), "val": shards_of([2, 2])})

    straight = KeyRecorder()
    uninterrupted = fit(root, [straight])
    assert uninterrupted.global_step == MAX_STEPS and len(straight.keys) == MAX_STEPS

    before, after = KeyRecorder(), KeyRecorder()
    checkpoint = tmp_path / "preempted.ckpt"
    assert fit(root, [before, StopAfter(5, checkpoint)]).global_step == 5
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["consumed"]
    assert len(saved["vlp_rng_states"]) == 1
    # A different global seed: nothing may depend on the process's RNG state at start-up.
    resumed = fit(root, [after], ckpt_path=checkpoint, seed=123)
    assert resumed.global_step == MAX_STEPS

    assert before.keys + after.keys == straight.keys
    expected = uninterrupted.lightning_module.state_dict()
    for name, value in resumed.lightning_module.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_from_the_last_batch_of_an_epoch(tmp_path: Path) -> None:
    """Saved after step 8, the last batch of epoch 0 (Lightning's prefetch has seen the epoch end): the
    resumed run starts epoch 1 with Lightning, not with an empty remainder of epoch 0, so its epoch
    counter, keys and weights match the uninterrupted run's."""
    root = tmp_path / "data"
    write_dataset(root, {"train": shards_of([7, 7, 7, 7]), "val": shards_of([2, 2])})
    straight = KeyRecorder()
    uninterrupted = fit(root, [straight])

    before, after = KeyRecorder(), KeyRecorder()
    checkpoint = tmp_path / "epoch_end.ckpt"
    fit(root, [before, StopAfter(8, checkpoint)])
    position = torch.load(checkpoint, map_location="cpu", weights_only=True)["loops"]["fit_loop"]
    assert position["state_dict"]["combined_loader"][0]["finished"]
    resumed = fit(root, [after], ckpt_path=checkpoint, seed=7)

    assert before.keys + after.keys == straight.keys
    assert resumed.current_epoch == uninterrupted.current_epoch
    expected = uninterrupted.lightning_module.state_dict()
    for name, value in resumed.lightning_module.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
