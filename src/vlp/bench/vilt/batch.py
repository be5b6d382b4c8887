"""The one training batch both sides train on, built once outside every timing, in each side's form."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from vlp.bench.vilt.config import MASK_ID, ViltBenchConfig


@dataclass
class BenchBatch:
    """One training batch, in the form each side takes it (built once, outside every timing)."""

    pixels: Tensor  # [B, 3, H, W]
    text_ids: Tensor  # [B, L] with MASK_ID at the labelled positions
    text_mask: Tensor  # [B, L] bool, all True
    mlm_labels: Tensor  # [B, L], -100 where unlabelled
    itm_labels: Tensor  # [B]

    def head(self, size: int) -> BenchBatch:
        """The first ``size`` samples."""
        return BenchBatch(*(getattr(self, f.name)[:size] for f in fields(self)))

    def for_vlp(self) -> Any:
        from vlp.batch import Batch

        size = self.text_ids.shape[0]
        return Batch(
            keys=[str(i) for i in range(size)],
            pixels=self.pixels,
            pixel_mask=torch.ones(size, *self.pixels.shape[2:], dtype=torch.bool),
            text_mask=self.text_mask,
            mlm_text_ids=self.text_ids,
            mlm_labels=self.mlm_labels,
            itm_labels=self.itm_labels,
        )

    def for_transformers(self) -> dict[str, Tensor]:
        """The integer masks transformers' ``ViltProcessor`` produces."""
        size = self.text_ids.shape[0]
        return {
            "input_ids": self.text_ids,
            "attention_mask": self.text_mask.long(),
            "pixel_values": self.pixels,
            "pixel_mask": torch.ones(size, *self.pixels.shape[2:], dtype=torch.long),
        }


def make_batch(config: ViltBenchConfig, size: int, seed: int) -> BenchBatch:
    """Random images and ids; ``num_masked`` positions per sample replaced by [MASK] and labelled."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(MASK_ID + 1, config.vocab_size, (size, config.text_len), generator=generator)
    order = torch.rand(size, config.text_len - 1, generator=generator).argsort(1)
    positions = order[:, : config.num_masked] + 1  # never the first ([CLS]) token
    labels = torch.full_like(ids, -100).scatter(1, positions, ids.gather(1, positions))
    side = config.image_size
    return BenchBatch(
        pixels=torch.randn(size, 3, side, side, generator=generator),
        text_ids=ids.scatter(1, positions, MASK_ID),
        text_mask=torch.ones(size, config.text_len, dtype=torch.bool),
        mlm_labels=labels,
        itm_labels=torch.randint(0, 2, (size,), generator=generator),
    )
