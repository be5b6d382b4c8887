"""A tiny generative-VQA task and its fixed batches, trained and validated under a Lightning strategy.

``test_generative_vqa.py`` imports this module for the task, the batches and the single-process reference,
and launches it as a script for the 2-process runs, as ``ernie_vilg_distributed_run.py`` does::

    python tests/tasks/generative_vqa_distributed_run.py {ddp,fsdp} --out results.pt

The model and VQGAN are :mod:`ernie_vilg_parts`' (16 px → 4x4 codes). A row is ``[CLS] q [SEP] a [SEP]``:
a question of 2 to 5 random words and a one-word answer, so every row has exactly two answer targets
(the word and ``[SEP]``) and the mean of the ranks' mean losses is the global mean. The run trains
:data:`distributed_run.STEPS` steps (rank ``r`` of ``W`` takes rows ``[r*B/W, (r+1)*B/W)`` of each global
batch), then validates on two batches (answers decoded, accuracy over both processes). Weights come from a
rank-dependent seed, the VQGAN's included. Rank 0 writes a ``torch.save`` dict.
"""

from __future__ import annotations

import sys
from typing import Any

import distributed_run as run
import ernie_vilg_parts as parts
import torch

from vlp.batch import Batch
from vlp.objectives import AnswerLM
from vlp.tasks.generative_vqa import GenerativeVQATask
from vlp.tokenizers import load_tokenizer

ANSWERS = (2082, 2088, 2051, 2067)  # "school", "world", "time", "back": whole words, no article or number
QUESTION_WORDS = (2, 5)  # words per question, both ends included
VAL_BATCHES = 2


def make_task(seed: int = run.INIT_SEED, **kwargs: Any) -> GenerativeVQATask:
    """The tiny ERNIE-ViLG with the answer loss (weights from ``seed``, the VQGAN from ``seed + 1``)."""
    kwargs.setdefault("max_answer_len", 3)
    return GenerativeVQATask(
        parts.tiny_model(seed), {"gvqa": AnswerLM()}, vqgan=parts.tiny_vqgan(seed + 1), **kwargs
    )


def batches(steps: int, size: int = 8, seed: int = 0) -> list[Batch]:
    """Random images, questions of varying length (padding at the end), one-word answers (module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    tokenizer = load_tokenizer()
    out = []
    for step in range(steps):
        lengths = torch.randint(QUESTION_WORDS[0], QUESTION_WORDS[1] + 1, (size,), generator=generator)
        words = torch.randint(*parts.WORDS, (size, QUESTION_WORDS[1]), generator=generator)
        answers = torch.tensor(ANSWERS)[torch.randint(len(ANSWERS), (size,), generator=generator)]
        questions = [[parts.CLS, *w[:n].tolist(), parts.SEP] for w, n in zip(words, lengths.tolist())]
        texts = [[*q, int(a), parts.SEP] for q, a in zip(questions, answers)]
        text_ids, text_mask = padded(questions)
        caption_ids, caption_mask = padded(texts)
        out.append(
            Batch(
                keys=[f"{seed}-{step}-{i}/q0" for i in range(size)],
                pixels=torch.rand(size, 3, parts.IMAGE, parts.IMAGE, generator=generator) * 2 - 1,
                pixel_mask=torch.ones(size, parts.IMAGE, parts.IMAGE, dtype=torch.bool),
                text_ids=text_ids,
                text_mask=text_mask,
                caption_ids=caption_ids,
                caption_mask=caption_mask,
                captions=tokenizer.batch_decode(text_ids, skip_special_tokens=True),
                references=[[tokenizer.decode([int(a)])] for a in answers],
            )
        )
    return out


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids padded with ``[PAD]`` at the end, and their mask."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), parts.PAD)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, ids != parts.PAD


def train_batches() -> list[Batch]:
    return batches(run.STEPS, size=run.GLOBAL_BATCH)


def val_batches() -> list[Batch]:
    return batches(VAL_BATCHES, size=run.GLOBAL_BATCH, seed=12)


def fit(devices: int, strategy: Any) -> dict[str, Any]:
    recorder = run.LossRecorder()
    trainer = run.make_trainer(devices=devices, strategy=strategy, callbacks=[recorder])
    # AdamW's eps at 1e-6 as in e2e_distributed_run: float-noise gradients are not blown up into steps
    task = make_task(seed=run.INIT_SEED + trainer.global_rank, lr=run.LR, warmup=0.2, eps=1e-6)
    data = run.RankRows(train_batches(), val_batches())
    trainer.fit(task, datamodule=data)
    losses = run.rank_mean(recorder.losses, trainer)
    trainer.validate(task, datamodule=data, verbose=False)
    return {"losses": losses, "metrics": run.val_metrics(trainer), "state": run.full_state_dict(task)}


if __name__ == "__main__":
    run.script_main(sys.argv[1:], __doc__, lambda devices, make_strategy: fit(devices, make_strategy()))
