"""Tiny E2E-VLP fine-tuning tasks (NLVR2, retrieval), fixed batches for them, and their runs under a
Lightning strategy.

``tests/tasks/test_e2e_finetune.py`` imports this module for the tasks, the batches and the
single-process references, and launches it as a script for the 2-process runs (gloo on the CPU), as
``distributed_run.py`` does for the ViLT tasks, whose trainer and helpers it reuses (and
``finetune_parts``' batches, at this model's image size)::

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

import sys
from functools import partial
from typing import Any

import distributed_run as run
import finetune_parts as parts
import torch

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


# finetune_parts' batches at the CNN's image size
pair_batches = partial(parts.pair_batches, image=IMAGE)
caption_batches = partial(parts.caption_batches, image=IMAGE)
retrieval_eval_batches = partial(parts.retrieval_eval_batches, image=IMAGE)


def colour_batch(size: int = 2, seed: int = 4) -> Batch:
    """Retrieval training batch whose matching a few steps teach: image ``i`` is one colour (plus noise),
    caption ``i`` one statement with colour word ``i``. Only the image tells which caption is its own."""
    if size > 4:
        raise ValueError(f"colour_batch has 4 colours, asked for {size} images")
    generator = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])[:size]
    ids, mask = parts.random_text(generator, 1)
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
    """Train ``kind`` for :data:`distributed_run.STEPS` steps; retrieval then validates. ``micro_batches``:
    each process accumulates that many pieces of its rows per step. ``rows``: train on those rows of every
    global batch only (what one rank would do if nothing synchronised the ranks). Returns the per-step
    global losses, the validation metrics (retrieval) and the full weights."""
    batches = train_batches(kind)
    if rows is not None:
        batches = [run.slice_batch(batch, *rows) for batch in batches]
    eval_batches = retrieval_eval_batches() if kind == "retrieval" else None
    return run.train_finetune(
        lambda seed: make_task(kind, seed), batches, devices, strategy, eval_batches, micro_batches
    )


def run_single(kind: str) -> dict[str, Any]:
    """The reference: one process over each global batch; retrieval over its two halves, accumulated."""
    return fit(kind, 1, "auto", micro_batches=2 if kind == "retrieval" else 1)


def run_all(devices: int, make_strategy: Any) -> dict[str, Any]:
    return {kind: fit(kind, devices, make_strategy()) for kind in KINDS}


if __name__ == "__main__":
    run.script_main(sys.argv[1:], __doc__, run_all)
