"""Tiny E2E-VLP tasks (pre-training, captioning, detection) and fixed batches for them.

Shared by the E2E task tests and by ``e2e_distributed_run.py`` (imported there as a plain module). The
grid comes from timm's ``test_resnet`` (stride 32: a 2x2 grid at 64 px); dropout is off, so a forward
pass is a function of the weights and the batch (and, through the CNN's BatchNorm, of the batch's
other images). The text vocabulary covers the bundled tokenizer's
first real words (ids 1996-2099: "the", "of", "and" ...) so generated captions decode to words, with
its ``[CLS]`` (101) / ``[SEP]`` (102) / ``[PAD]`` (0) as BOS / EOS / padding.

Every sample carries exactly one MLM label, captions of one length and two boxes, so every rank and
micro-batch holds the same number of MLM and caption targets (the mean of per-rank means is the global
mean); the detection loss is normalised by the boxes of all processes already.
"""

from __future__ import annotations

from typing import Any

import torch

from vlp.batch import Batch, Targets
from vlp.models.e2e_vlp.model import E2EVLP
from vlp.models.embedders import CNNGridEmbedder, ViTPatchEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.decoder import TransformerDecoder
from vlp.models.layers.heads import DetectionHead, ITMHead, MLMHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.objectives import CaptioningObjective, DetectionObjective, ITMObjective, MLMObjective
from vlp.tasks import CaptioningTask, DetectionTask, E2EPretrainTask
from vlp.tokenizers import load_tokenizer

DIM = 32
VOCAB = 2100
WORDS = (1996, 2100)  # "the" ... : real words of the bundled tokenizer
CLS, SEP, PAD, MASK = 101, 102, 0, 103
IMAGE = 64
TEXT_LEN = 8
CAPTION_LEN = 6
NUM_CLASSES = 3
NUM_ATTRIBUTES = 2
BOXES = 2


def tiny_e2e(seed: int | None = 0, decoder: bool = True, visual: str = "grid", **model_kwargs: Any) -> E2EVLP:
    """``visual="patch"``: ViT patches instead of the CNN grid, for runs that must not depend on how a
    batch is split (the CNN's BatchNorm normalises by the statistics of each process's rows).
    ``model_kwargs``: further :class:`E2EVLP` arguments (``anchor_queries``, ``query_groups`` ...)."""
    if seed is not None:
        torch.manual_seed(seed)
    embedder = (
        CNNGridEmbedder(dim=DIM, backbone="test_resnet")
        if visual == "grid"
        else ViTPatchEmbedder(dim=DIM, patch_size=16, pos_grid=4)
    )
    return E2EVLP(
        TextEmbedder(vocab_size=VOCAB, dim=DIM, max_len=16),
        embedder,
        TransformerEncoder(dim=DIM, depth=2, num_heads=4),
        TransformerDecoder(dim=DIM, depth=2, num_heads=4) if decoder else None,
        num_queries=5,
        **model_kwargs,
    )


def detection_objective() -> DetectionObjective:
    return DetectionObjective(DetectionHead(DIM, NUM_CLASSES, NUM_ATTRIBUTES))


def pretrain_task(
    seed: int | None = 0, visual: str = "grid", model_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> E2EPretrainTask:
    model = tiny_e2e(seed, visual=visual, **(model_kwargs or {}))
    objectives = {
        "mlm": MLMObjective(MLMHead(DIM, vocab_size=VOCAB)),
        "itm": ITMObjective(ITMHead(DIM)),
        "detection": detection_objective(),
        "caption": CaptioningObjective(),
    }
    return E2EPretrainTask(model, objectives, **kwargs)


def captioning_task(seed: int | None = 0, visual: str = "grid", **kwargs: Any) -> CaptioningTask:
    kwargs.setdefault("max_caption_len", CAPTION_LEN + 2)
    kwargs.setdefault("meteor", False)  # no Java process per evaluation in the fast tests
    return CaptioningTask(tiny_e2e(seed, visual=visual), {"caption": CaptioningObjective()}, **kwargs)


def detection_task(
    seed: int | None = 0, visual: str = "grid", model_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> DetectionTask:
    model = tiny_e2e(seed, visual=visual, **(model_kwargs or {}))
    return DetectionTask(model, {"detection": detection_objective()}, **kwargs)


def e2e_batches(steps: int = 1, size: int = 8, seed: int = 11) -> list[Batch]:
    """Batches with every field the E2E tasks read. Image ``i`` is a noise pattern whose two boxes,
    classes and caption are functions of it, so each can be learnt."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for step in range(steps):
        ids = torch.randint(*WORDS, (size, TEXT_LEN), generator=generator)
        ids[:, 0], ids[:, -1] = CLS, SEP
        lengths = torch.randint(4, TEXT_LEN + 1, (size,), generator=generator)
        text_mask = torch.arange(TEXT_LEN)[None] < lengths[:, None]
        ids = ids.masked_fill(~text_mask, PAD)
        rows = torch.arange(size)
        position = torch.randint(1, 3, (size,), generator=generator)
        mlm_labels = torch.full_like(ids, -100)
        mlm_labels[rows, position] = ids[rows, position]
        masked = ids.clone()
        masked[rows, position] = MASK
        itm_labels = torch.randint(0, 2, (size,), generator=generator)
        captions = torch.randint(*WORDS, (size, CAPTION_LEN), generator=generator)
        captions[:, 0], captions[:, -1] = CLS, SEP
        centres = torch.rand(size, BOXES, 2, generator=generator) * 0.5 + 0.25
        sides = torch.rand(size, BOXES, 2, generator=generator) * 0.2 + 0.1
        targets = [
            Targets(
                torch.cat([centres[i], sides[i]], dim=1),
                torch.randint(0, NUM_CLASSES, (BOXES,), generator=generator),
                (torch.rand(BOXES, NUM_ATTRIBUTES, generator=generator) > 0.5).float(),
            )
            for i in range(size)
        ]
        batches.append(
            Batch(
                keys=[f"{step}-{i}" for i in range(size)],
                pixels=torch.randn(size, 3, IMAGE, IMAGE, generator=generator),
                pixel_mask=torch.ones(size, IMAGE, IMAGE, dtype=torch.bool),
                text_ids=ids,
                text_mask=text_mask,
                mlm_text_ids=masked,
                mlm_labels=mlm_labels,
                itm_labels=itm_labels,
                itm_image_index=torch.where(itm_labels == 1, rows, rows ^ 1),
                targets=targets,
                caption_ids=captions,
                caption_mask=torch.ones(size, CAPTION_LEN, dtype=torch.bool),
                references=[
                    [text, "the cat sat on the mat"]
                    for text in load_tokenizer().batch_decode(captions, skip_special_tokens=True)
                ],
            )
        )
    return batches
