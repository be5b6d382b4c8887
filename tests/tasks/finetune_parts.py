"""Tiny fine-tuning tasks (VQA, NLVR2, retrieval) and fixed batches for them (the image size a parameter:
E2E-VLP's fine-tuning tests use the same batches at its CNN's size).

Shared by the task tests and by ``distributed_run.py`` (imported there as a plain module: the 2-process
runs put this folder on ``sys.path``). Dropout is off and all patches are kept, so a forward pass is a
function of the weights and the batch.
"""

from __future__ import annotations

from typing import Any

import torch

from vlp.batch import Batch
from vlp.models.embedders.text import TextEmbedder
from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.layers.heads import ClassifierHead, ITMHead, MLMHead, RankHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.objectives import ITMObjective, MLMObjective, NLVR2Objective, RetrievalObjective, VQAObjective
from vlp.tasks import NLVR2Task, PretrainTask, RetrievalTask, VQATask

DIM = 32
VOCAB = 100
TEXT_LEN = 8
IMAGE = 16
NUM_ANSWERS = 6


def tiny_vilt(seed: int | None = None, vocab: int = VOCAB) -> ViLT:
    if seed is not None:
        torch.manual_seed(seed)
    return ViLT(
        TextEmbedder(vocab_size=vocab, dim=DIM, max_len=16),
        ViTPatchEmbedder(dim=DIM, patch_size=8, pos_grid=2),
        TransformerEncoder(dim=DIM, depth=2, num_heads=4),
    )


def pretrain_task(seed: int = 0) -> PretrainTask:
    model = tiny_vilt(seed)
    objectives = {"mlm": MLMObjective(MLMHead(DIM, vocab_size=VOCAB)), "itm": ITMObjective(ITMHead(DIM))}
    return PretrainTask(model, objectives)


def vqa_task(seed: int | None = 0, **kwargs: Any) -> VQATask:
    model = tiny_vilt(seed)
    return VQATask(model, {"vqa": VQAObjective(ClassifierHead(DIM, NUM_ANSWERS))}, **kwargs)


def nlvr2_task(seed: int | None = 0, **kwargs: Any) -> NLVR2Task:
    model = tiny_vilt(seed)
    return NLVR2Task(model, {"nlvr2": NLVR2Objective(ClassifierHead(2 * DIM, 2))}, **kwargs)


def retrieval_task(seed: int | None = 0, **kwargs: Any) -> RetrievalTask:
    model = tiny_vilt(seed)
    return RetrievalTask(model, {"rank": RetrievalObjective(RankHead(DIM))}, **kwargs)


def random_text(
    generator: torch.Generator, size: int, length: int = TEXT_LEN
) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` texts of 3 to ``length`` random tokens after a [CLS]-like one, padded with 0; their mask."""
    ids = torch.randint(5, VOCAB, (size, length), generator=generator)
    ids[:, 0] = 2  # a [CLS]-like first token
    lengths = torch.randint(3, length + 1, (size,), generator=generator)
    mask = torch.arange(length)[None] < lengths[:, None]
    return ids.masked_fill(~mask, 0), mask


def random_pixels(
    generator: torch.Generator, size: int, image: int = IMAGE
) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` noise images of ``image`` x ``image`` pixels, every pixel real."""
    pixels = torch.randn(size, 3, image, image, generator=generator)
    return pixels, torch.ones(size, image, image, dtype=torch.bool)


def vqa_batches(steps: int = 1, size: int = 8, seed: int = 7) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for step in range(steps):
        ids, mask = random_text(generator, size)
        pixels, pixel_mask = random_pixels(generator, size)
        answers = torch.zeros(size, NUM_ANSWERS)
        answers[torch.arange(size), torch.randint(0, NUM_ANSWERS, (size,), generator=generator)] = 1.0
        answers[torch.arange(size), torch.randint(0, NUM_ANSWERS, (size,), generator=generator)] += 1 / 3
        batches.append(
            Batch(
                keys=[f"{step}-{i}" for i in range(size)],
                pixels=pixels,
                pixel_mask=pixel_mask,
                text_ids=ids,
                text_mask=mask,
                answers=answers.clamp(max=1.0),
            )
        )
    return batches


def pair_batches(steps: int = 1, size: int = 8, seed: int = 8, image: int = IMAGE) -> list[Batch]:
    """NLVR2 batches: a statement, a left and a right image, a true/false label per row."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for step in range(steps):
        ids, mask = random_text(generator, size)
        left, left_mask = random_pixels(generator, size, image)
        right, right_mask = random_pixels(generator, size, image)
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


def caption_batches(steps: int = 1, size: int = 8, seed: int = 9, image: int = IMAGE) -> list[Batch]:
    """Retrieval training batches: text ``i`` describes image ``i``."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for step in range(steps):
        ids, mask = random_text(generator, size)
        pixels, pixel_mask = random_pixels(generator, size, image)
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


def retrieval_eval_batches(
    sizes: tuple[int, ...] = (3, 2, 4), seed: int = 10, image: int = IMAGE
) -> list[Batch]:
    """Evaluation batches of ``sizes`` images with 1-3 texts each, text lengths differing per batch."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for b, size in enumerate(sizes):
        counts = torch.randint(1, 4, (size,), generator=generator)
        owners = torch.repeat_interleave(torch.arange(size), counts)
        ids, mask = random_text(generator, len(owners), length=TEXT_LEN - b)
        pixels, pixel_mask = random_pixels(generator, size, image)
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


def eval_pool_batches(batches: list[Batch]) -> list[dict[str, torch.Tensor]]:
    """``batches`` as :meth:`RetrievalTask._keep` keeps them, for ``gather_eval_pool``."""
    names = ("pixels", "pixel_mask", "text_ids", "text_mask", "text_image_index")
    return [{name: getattr(batch, name) for name in names} for batch in batches]


def train_steps(task: Any, batches: list[Batch], steps: int, lr: float = 3e-3) -> list[float]:
    """Plain AdamW steps on the task's loss, cycling through ``batches``; the losses."""
    optimizer = torch.optim.AdamW(task.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = task.compute_losses(batches[step % len(batches)], "train")
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
