"""What the fine-tuning data modules share: a collator base and a :class:`ShardDataModule` without MLM/ITM.

Fine-tuning batches (VQA, image pairs, retrieval) carry clean text and no pre-training views. Every
collator here can blank the images (``blank_images``: every pixel set to the normalised grey 0, pixel
masks kept): the text-only control, in which a model can only learn what the text alone predicts.
Unlike the pre-training ``shuffle_images`` control it applies to every split, since a text-only
model is also evaluated without images.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from vlp.batch import Batch
from vlp.datamodules.collate import SkippedSample, pad_images, process_seed
from vlp.datamodules.shards import MAX_IMAGE_PIXELS, ShardDataModule
from vlp.datamodules.synth.shapes import ShapesConfig
from vlp.tokenizers import BUNDLED, load_tokenizer

log = logging.getLogger(__name__)


class FinetuneCollator(ABC):
    """``list[decoded sample | SkippedSample] -> Batch``: skips counted, text tokenized, images padded.

    Subclasses implement :meth:`collate` on the usable samples. Randomness comes from the generator a
    :class:`~vlp.datamodules.stream.ShardStream` passes with each batch (else from a per-process one),
    so batches repeat exactly on resume.
    """

    def __init__(
        self,
        tokenizer: str = BUNDLED,
        max_text_len: int = 40,
        blank_images: bool = False,
        seed: int = 0,
        max_logged_skips: int = 5,
    ) -> None:
        self.tokenizer_name = tokenizer
        self.max_text_len = max_text_len
        self.blank_images = blank_images
        self.seed = seed
        self.max_logged_skips = max_logged_skips
        self._generator: torch.Generator | None = None
        self._logged_skips = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_generator=None, _logged_skips=0)
        return state

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.tokenizer_name)

    def __call__(self, samples: Sequence[Any], generator: torch.Generator | None = None) -> Batch:
        kept = [s for s in samples if not isinstance(s, SkippedSample)]
        skipped = [s for s in samples if isinstance(s, SkippedSample)]
        self._log_skips(skipped)
        skipped_keys = [s.key for s in skipped]
        if not kept:
            return Batch(keys=[], num_skipped=len(skipped), skipped_keys=skipped_keys)
        if generator is None:
            if self._generator is None:
                self._generator = torch.Generator().manual_seed(process_seed(self.seed))
            generator = self._generator
        batch = self.collate(kept, generator)
        return replace(batch, num_skipped=len(skipped), skipped_keys=skipped_keys)

    @abstractmethod
    def collate(self, samples: list[Any], generator: torch.Generator) -> Batch:
        """The batch of the usable (decoded) samples; skips are added by :meth:`__call__`."""

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``text_ids [T, L]`` and ``text_mask [T, L]`` (bool), padded to the longest, truncated."""
        encoding = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_text_len,
            return_token_type_ids=False,
            return_tensors="pt",
        )
        return encoding["input_ids"], encoding["attention_mask"].bool()

    def images(self, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Padded ``pixels`` and ``pixel_mask``; with ``blank_images`` every pixel is the grey 0."""
        pixels, pixel_mask = pad_images(images)
        if self.blank_images:
            pixels.zero_()
        return pixels, pixel_mask

    def _log_skips(self, skipped: Sequence[SkippedSample]) -> None:
        for marker in skipped:
            if self._logged_skips >= self.max_logged_skips:
                return
            self._logged_skips += 1
            tail = (
                " (further skips are counted, not logged)"
                if self._logged_skips == self.max_logged_skips
                else ""
            )
            log.warning("vlp: skipped sample %s: %s%s", marker.key, marker.reason, tail)


class FinetuneDataModule(ShardDataModule):
    """A :class:`~vlp.datamodules.shards.ShardDataModule` for fine-tuning: no MLM masking, no ITM pairs.

    Args:
        blank_images: the text-only control (see the module docstring), on every split.
        Others: as :class:`~vlp.datamodules.shards.ShardDataModule`.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        synth: ShapesConfig | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        image_size: int = 384,
        patch_size: int = 32,
        randaugment: bool = False,
        max_text_len: int = 40,
        tokenizer: str = BUNDLED,
        blank_images: bool = False,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        epoch_samples: int | None = None,
        seed: int = 0,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(
            root=root,
            train_split=train_split,
            val_split=val_split,
            test_split=test_split,
            synth=synth,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            image_size=image_size,
            patch_size=patch_size,
            randaugment=randaugment,
            max_text_len=max_text_len,
            tokenizer=tokenizer,
            mlm_probability=0.0,
            itm=False,
            shuffle_buffer=shuffle_buffer,
            resampled=resampled,
            epoch_samples=epoch_samples,
            seed=seed,
            max_image_pixels=max_image_pixels,
        )
        self.blank_images = blank_images

    def collator_args(self) -> dict[str, Any]:
        """The :class:`FinetuneCollator` arguments every split shares."""
        return {
            "tokenizer": self.tokenizer,
            "max_text_len": self.max_text_len,
            "blank_images": self.blank_images,
            "seed": self.seed,
        }
