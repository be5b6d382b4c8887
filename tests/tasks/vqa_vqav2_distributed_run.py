"""VQATask validated on converted VQAv2 shards under DDP on two CPU processes, for the VQA task tests.

``tests/tasks/test_vqa_vqav2_task.py`` imports :func:`forced_task` from here and launches this file as a
script (Lightning's launcher re-runs it once per rank, gloo on the CPU)::

    python tests/tasks/vqa_vqav2_distributed_run.py ddp --out results.pt --data SHARDS

Rank 0 writes a ``torch.save`` dict: the logged ``val/vqa_accuracy`` and ``val/vqa_score`` and the
questions each rank scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from finetune_parts import DIM, tiny_vilt
from lightning import Callback, Trainer

from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.transforms import ViltTransform
from vlp.datamodules.vqa import VQACollator, VQADecoder
from vlp.models.layers.heads import ClassifierHead
from vlp.objectives import VQAObjective
from vlp.tasks import VQATask

TOKENIZER_VOCAB = 30522  # the bundled tokenizer's: the questions are tokenized with it
TEXT_LEN = 16  # the tiny ViLT's text positions


def forced_task(answer: str, answers: list[str], **kwargs: Any) -> VQATask:
    """A tiny ViLT VQA task whose head answers ``answer`` to every question (last layer's weights zero,
    one large bias), whatever the encoder computes."""
    task = VQATask(
        tiny_vilt(seed=0, vocab=TOKENIZER_VOCAB),
        {"vqa": VQAObjective(ClassifierHead(DIM, len(answers)))},
        **kwargs,
    )
    last = task.objectives["vqa"].head.classifier[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[answers.index(answer)] = 10.0
    return task


def shards(root: Path) -> ShardDataModule:
    return ShardDataModule(
        str(root),
        transform=ViltTransform(16, 8),
        decoder=VQADecoder(),
        collator=VQACollator(max_text_len=TEXT_LEN),
        batch_size=8,
        num_workers=0,
    )


class LocalCounts(Callback):
    """The questions each rank put into the official accuracy (callbacks run before the task's hook,
    which resets the metric)."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        local = pl_module.vqa_accuracy.count.clone()
        everyone = [torch.zeros_like(local) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(everyone, local)
        self.counts = [int(count) for count in everyone]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["ddp"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--answer", required=True)
    args = parser.parse_args(argv)
    counts = LocalCounts()
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[counts],
        default_root_dir=str(args.out.parent),
    )
    data = shards(args.data)
    data.setup("validate")
    task = forced_task(args.answer, data.vocab["answers"])
    trainer.validate(task, datamodule=data, verbose=False)
    if trainer.global_rank == 0:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        torch.save({"metrics": metrics, "counts": counts.counts}, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
