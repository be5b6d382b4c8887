"""A tiny ERNIE-ViLG task (random-init VQGAN of factor 4: 16 px → a 4x4 code grid) and fixed batches.

Shared by the task tests and ``ernie_vilg_distributed_run.py`` (imported there as a plain module). The
text vocabulary covers the bundled tokenizer's first real words (ids 1996-2099) so generated captions
decode to words; ``[CLS]`` (101) / ``[SEP]`` (102) / ``[PAD]`` (0) are BOS / EOS / padding. Every
caption has the same length, so every rank holds the same number of caption targets (the mean of
per-rank means is the global mean); the image and reconstruction losses count every slot and pixel.
"""

from __future__ import annotations

from typing import Any

import torch

from vlp.batch import Batch
from vlp.models.ernie_vilg.model import ERNIEViLG
from vlp.models.vqgan.model import VQGAN
from vlp.objectives import ImageToTextLM, ReconstructionObjective, TextToImageLM
from vlp.tasks.text_to_image import ERNIEViLGTask
from vlp.tokenizers import load_tokenizer

DIM = 32
VOCAB = 2100
WORDS = (1996, 2100)
CLS, SEP, PAD = 101, 102, 0
IMAGE = 16
GRID = (4, 4)
NUM_CODES = 16
CODE_DIM = 4
CAPTION_LEN = 6


def tiny_vqgan(seed: int = 0) -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN(
        resolution=IMAGE, ch=8, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
        num_codes=NUM_CODES, code_dim=CODE_DIM, norm_groups=4,
    )  # fmt: skip


def tiny_model(seed: int = 0, patterns: list[str] | None = None) -> ERNIEViLG:
    torch.manual_seed(seed)
    return ERNIEViLG(
        vocab_size=VOCAB, num_codes=NUM_CODES, grid=GRID, dim=DIM, depth=4, num_heads=4, max_text_len=12,
        patterns=patterns, kernel_size=3, code_dim=CODE_DIM,
    )  # fmt: skip


def ernie_task(
    seed: int = 0,
    end_to_end: bool = False,
    train_decoder: bool = False,
    bridge: str = "straight_through",
    **kwargs: Any,
) -> ERNIEViLGTask:
    """Both LM directions (weights 1 and 0.5), plus the end-to-end L1 loss when ``end_to_end``."""
    objectives: dict[str, Any] = {"t2i": TextToImageLM(), "i2t": ImageToTextLM()}
    weights = {"t2i": 1.0, "i2t": 0.5}
    if end_to_end:
        objectives["recon"] = ReconstructionObjective(loss="l1", bridge=bridge)
        weights["recon"] = 1.0
    model = tiny_model(seed)
    vqgan = tiny_vqgan(seed + 1)
    kwargs.setdefault("meteor", False)
    kwargs.setdefault("max_caption_len", 8)
    return ERNIEViLGTask(
        model, objectives, loss_weights=weights, vqgan=vqgan, train_decoder=train_decoder, **kwargs
    )


def batches(steps: int, size: int = 4, seed: int = 0) -> list[Batch]:
    """Images in [-1, 1] with captions of :data:`CAPTION_LEN` tokens ``[CLS] w w w w [SEP]``."""
    generator = torch.Generator().manual_seed(seed)
    tokenizer = load_tokenizer()
    out = []
    for step in range(steps):
        words = torch.randint(*WORDS, (size, CAPTION_LEN - 2), generator=generator)
        cls = torch.full((size, 1), CLS)
        sep = torch.full((size, 1), SEP)
        ids = torch.cat([cls, words, sep], 1)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        out.append(
            Batch(
                keys=[f"{seed}-{step}-{i}" for i in range(size)],
                pixels=torch.rand(size, 3, IMAGE, IMAGE, generator=generator) * 2 - 1,
                pixel_mask=torch.ones(size, IMAGE, IMAGE, dtype=torch.bool),
                text_ids=ids,
                text_mask=torch.ones_like(ids, dtype=torch.bool),
                caption_ids=ids,
                caption_mask=torch.ones_like(ids, dtype=torch.bool),
                captions=texts,
                references=[[t] for t in texts],
            )
        )
    return out
