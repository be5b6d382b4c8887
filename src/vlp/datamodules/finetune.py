"""What the fine-tuning collators (VQA, image pairs, retrieval) share.

Fine-tuning batches carry clean text and no pre-training views. Every fine-tuning collator can blank the images (``blank_images``: every pixel set to the normalised grey 0, pixel
masks kept): the text-only control, in which a model can only learn what the text alone predicts.
Unlike the pre-training ``shuffle_images`` control it applies to every split, since a text-only
model is also evaluated without images.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Self

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from vlp.batch import Batch
from vlp.datamodules.collate import pad_images, process_seed
from vlp.datamodules.decode import SkippedSample
from vlp.datamodules.parts import Collator, Vocab
from vlp.tokenizers import BUNDLED, load_tokenizer

log = logging.getLogger(__name__)


class FinetuneCollator(Collator):
    """``list[decoded sample | SkippedSample] -> Batch``: skips counted, text tokenized, images padded.

    Subclasses implement :meth:`collate` on the usable samples. Randomness comes from the generator a
    :class:`~vlp.datamodules.stream.ShardStream` passes with each batch (else from a per-process one
    seeded by the ``seed`` :meth:`for_split` hands over), so batches repeat exactly on resume.

    Args:
        tokenizer, max_text_len: how the text is tokenized (longer text is truncated).
        blank_images: the text-only control (see the module docstring), on every split.
        max_logged_skips: skipped samples logged by name (the rest are counted).
    """

    def __init__(
        self,
        tokenizer: str = BUNDLED,
        max_text_len: int = 40,
        blank_images: bool = False,
        max_logged_skips: int = 5,
    ) -> None:
        self.tokenizer_name = tokenizer
        self.max_text_len = max_text_len
        self.blank_images = blank_images
        self.max_logged_skips = max_logged_skips
        self.seed = 0  # the split's, handed over by for_split
        self._generator: torch.Generator | None = None
        self._logged_skips = 0

    def for_split(self, train: bool, seed: int = 0, vocab: Vocab | None = None) -> Self:
        """The split's collator, randomness from ``seed`` when no generator is passed."""
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        bound = self._bound_copy()
        bound.seed = seed
        return bound

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_generator=None, _logged_skips=0)
        return state

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.tokenizer_name)

    def __call__(self, samples: Sequence[Any], generator: torch.Generator | None = None) -> Batch:
        self._check_bound()
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
