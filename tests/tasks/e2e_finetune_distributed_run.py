"""Tiny E2E-VLP fine-tuning tasks (NLVR2, retrieval), fixed batches for them, and their runs under a
Lightning strategy.

``tests/tasks/test_e2e_finetune.py`` imports this module for the tasks, the batches and the
single-process references, and launches it as a script for the 2-process runs (gloo on the CPU), as
``distributed_run.py`` does for the ViLT tasks, whose trainer and helpers it reuses::

    python tests/tasks/e2e_finetune_distributed_run.py {ddp,fsdp} --out results.pt

The model is E2E-VLP's encoder side as the shapes recipes build it (``decoder=None``, a GroupNorm after
the grid's projection), at test size: timm's ``test_resnet`` grid (stride 32, a 2x2 grid at 64 px), width
32, 2 encoder layers. Dropout is off, so a forward pass is a function of the weights and the batch.

The distributed runs freeze the CNN's BatchNorm (``freeze_bn=True``): in training mode a BatchNorm
normalises by the statistics of the rows each process holds, so two processes of 4 rows would
legitimately differ from one process of 8 (and DDP broadcasts rank 0's running statistics while FSDP2
keeps each rank's). Frozen, every row's tokens depend on its own image and the weights only.

* NLVR2: rank ``r`` of 2 trains on rows ``[4r, 4r + 4)`` of each global batch of 8; its loss is a mean
  over rows, so the mean of the ranks' means is one process's mean over all 8 rows.
* Retrieval: each image is ranked against the other captions of the rows its process holds
  (``negatives=3``: all of them, only their order is random). The one-process reference holds the same
  rows: it accumulates the gradients of the two halves of each global batch (``accumulate_grad_batches=2``,
  Lightning divides each half's loss by 2), which is the average DDP and FSDP2 compute. Then each rank
  validates on different (and differently many) evaluation batches: the recall logged must be one
  process's over every text x image pair.

Rank 0 writes a ``torch.save`` dict (``weights_only`` loadable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import distributed_run as run
import torch
from torch import Tensor

from vlp.batch import Batch
from vlp.models.e2e_vlp.model import E2EVLP
from vlp.models.embedders import CNNGridEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.heads import ClassifierHead, RankHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.objectives import NLVR2Objective, RetrievalObjective
from vlp.tasks import NLVR2Task, RetrievalTask

DIM = 32
VOCAB = 100
TEXT_LEN = 8
IMAGE = 64
KINDS = ("nlvr2", "retrieval")
NEGATIVES = 3  # per rank: 4 rows, so every other caption of the rank's rows
EVAL_CHUNK = 16


def tiny_e2e_encoder(seed: int | None = 0, freeze_bn: bool = False) -> E2EVLP:
    """E2E-VLP without a decoder (what the NLVR2 and retrieval recipes build), weights from ``seed``."""
    if seed is not None:
        torch.manual_seed(seed)
    return E2EVLP(
        TextEmbedder(vocab_size=VOCAB, dim=DIM, max_len=16),
        CNNGridEmbedder(dim=DIM, backbone="test_resnet", norm_groups=8, freeze_bn=freeze_bn),
        TransformerEncoder(dim=DIM, depth=2, num_heads=4),
        None,
    )


def nlvr2_task(seed: int | None = 0, freeze_bn: bool = False, **kwargs: Any) -> NLVR2Task:
    model = tiny_e2e_encoder(seed, freeze_bn)
    return NLVR2Task(model, {"nlvr2": NLVR2Objective(ClassifierHead(2 * DIM, 2))}, **kwargs)


def retrieval_task(seed: int | None = 0, freeze_bn: bool = False, **kwargs: Any) -> RetrievalTask:
    model = tiny_e2e_encoder(seed, freeze_bn)
    return RetrievalTask(model, {"rank": RetrievalObjective(RankHead(DIM))}, **kwargs)


def _text(generator: torch.Generator, size: int, length: int = TEXT_LEN) -> tuple[Tensor, Tensor]:
    ids = torch.randint(5, VOCAB, (size, length), generator=generator)
    ids[:, 0] = 2  # a [CLS]-like first token
    lengths = torch.randint(3, length + 1, (size,), generator=generator)
    mask = torch.arange(length)[None] < lengths[:, None]
    return ids.masked_fill(~mask, 0), mask


def _pixels(generator: torch.Generator, size: int) -> tuple[Tensor, Tensor]:
    pixels = torch.randn(size, 3, IMAGE, IMAGE, generator=generator)
    return pixels, torch.ones(size, IMAGE, IMAGE, dtype=torch.bool)


def pair_batches(steps: int = 1, size: int = 8, seed: int = 8) -> list[Batch]:
    """NLVR2 batches: a statement, a left and a right image, a true/false label per row."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for step in range(steps):
        ids, mask = _text(generator, size)
        left, left_mask = _pixels(generator, size)
        right, right_mask = _pixels(generator, size)
        batches.append(
            Batch(
                keys=[f"{step}-{i}" for i in range(size)],
                pixels=left,
                pixel_mask=left_mask,
                pixels_right=right,
                pixel_mask_right=right_mask,
                text_ids=ids,
                text_mask=mask,
                pair_labels=torch.randint(0, 2, (size,), generator=generator),
            )
        )
    return batches


def caption_batches(steps: int = 1, size: int = 8, seed: int = 9) -> list[Batch]:
    """Retrieval training batches: text ``i`` describes image ``i``."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for step in range(steps):
        ids, mask = _text(generator, size)
        pixels, pixel_mask = _pixels(generator, size)
        batches.append(
            Batch(
                keys=[f"{step}-{i}" for i in range(size)],
                pixels=pixels,
                pixel_mask=pixel_mask,
                text_ids=ids,
                text_mask=mask,
            )
        )
    return batches


def colour_batch(size: int = 2, seed: int = 4) -> Batch:
    """Retrieval training batch whose matching a few steps teach: image ``i`` is one colour (plus noise),
    caption ``i`` one statement with colour word ``i``. Only the image tells which caption is its own."""
    if size > 4:
        raise ValueError(f"colour_batch has 4 colours, asked for {size} images")
    generator = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])[:size]
    ids, mask = _text(generator, 1)
    ids, mask = ids.expand(size, -1).clone(), mask.expand(size, -1).clone()
    ids[:, 1] = torch.arange(10, 10 + size)  # the colour word
    pixels = colours[:, :, None, None] + 0.3 * torch.randn(size, 3, IMAGE, IMAGE, generator=generator)
    return Batch(
        keys=[str(i) for i in range(size)],
        pixels=pixels,
        pixel_mask=torch.ones(size, IMAGE, IMAGE, dtype=torch.bool),
        text_ids=ids,
        text_mask=mask,
    )


def retrieval_eval_batches(sizes: tuple[int, ...] = (3, 2, 4), seed: int = 10) -> list[Batch]:
    """Evaluation batches of ``sizes`` images with 1-3 texts each, text lengths differing per batch."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for b, size in enumerate(sizes):
        owners = torch.repeat_interleave(
            torch.arange(size), torch.randint(1, 4, (size,), generator=generator)
        )
        ids, mask = _text(generator, len(owners), length=TEXT_LEN - b)
        pixels, pixel_mask = _pixels(generator, size)
        batches.append(
            Batch(
                keys=[f"{b}-{i}" for i in range(size)],
                pixels=pixels,
                pixel_mask=pixel_mask,
                text_ids=ids,
                text_mask=mask,
                text_image_index=owners,
            )
        )
    return batches


def eval_pool_batches(batches: list[Batch]) -> list[dict[str, Tensor]]:
    """``batches`` as :meth:`RetrievalTask._keep` keeps them, for ``gather_eval_pool``."""
    names = ("pixels", "pixel_mask", "text_ids", "text_mask", "text_image_index")
    return [{name: getattr(batch, name) for name in names} for batch in batches]


def make_task(kind: str, seed: int = run.INIT_SEED) -> NLVR2Task | RetrievalTask:
    """The task the distributed runs train: frozen BatchNorm (see the module docstring); AdamW's eps at
    1e-6, as ``e2e_distributed_run.py``: a gradient that is float noise would otherwise be normalised
    into a full-size step, different in every run."""
    common = {"seed": seed, "freeze_bn": True, "lr": run.LR, "warmup": 0.2, "eps": 1e-6}
    if kind == "nlvr2":
        return nlvr2_task(**common)
    return retrieval_task(negatives=NEGATIVES, eval_chunk_size=EVAL_CHUNK, **common)


def train_batches(kind: str) -> list[Batch]:
    make = pair_batches if kind == "nlvr2" else caption_batches
    return make(steps=run.STEPS, size=run.GLOBAL_BATCH)


def fit(
    kind: str, devices: int, strategy: Any, micro_batches: int = 1, rows: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Train ``kind`` for :data:`distributed_run.STEPS` steps (weights from a rank-dependent seed: the
    strategy must make rank 0's everyone's); retrieval then validates. ``micro_batches``: each process
    accumulates that many pieces of its rows per step. ``rows``: train on those rows of every global
    batch only (what one rank would do if nothing synchronised the ranks). Returns the per-step global
    losses, the validation metrics (retrieval) and the full weights."""
    recorder = run.LossRecorder()
    trainer = run.make_trainer(
        devices=devices, strategy=strategy, accumulate_grad_batches=micro_batches, callbacks=[recorder]
    )
    task = make_task(kind, seed=run.INIT_SEED + trainer.global_rank)
    batches = train_batches(kind)
    if rows is not None:
        batches = [run.slice_batch(batch, *rows) for batch in batches]
    trainer.fit(task, datamodule=run.StepBatches(batches, micro_batches))
    # Lightning records each piece's loss divided by micro_batches: a step's loss is their sum
    losses = torch.stack(recorder.losses).view(run.STEPS, micro_batches).sum(1)
    if trainer.world_size > 1:
        torch.distributed.all_reduce(losses)  # gloo has no AVG
        losses = losses / trainer.world_size
    result: dict[str, Any] = {"losses": losses.tolist()}
    if kind == "retrieval":
        trainer.validate(task, datamodule=run.EvalBatches(retrieval_eval_batches()), verbose=False)
        result["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    result["state"] = run.full_state_dict(task)
    return result


def run_single(kind: str) -> dict[str, Any]:
    """The reference: one process over each global batch; retrieval over its two halves, accumulated."""
    return fit(kind, 1, "auto", micro_batches=2 if kind == "retrieval" else 1)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["ddp", "fsdp"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # two processes share two cores
    make_strategy = (lambda: "ddp") if args.mode == "ddp" else (lambda: run.fsdp_strategy(2))
    results = {kind: fit(kind, 2, make_strategy()) for kind in KINDS}
    if torch.distributed.get_rank() == 0:
        torch.save(results, args.out)
    torch.distributed.destroy_process_group()  # before exit: a live gloo group can abort the process


if __name__ == "__main__":
    main(sys.argv[1:])
