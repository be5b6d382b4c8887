"""Image-text retrieval batches.

Training batches are image-caption pairs (one caption per image, drawn at random); the task draws
the negatives from the batch. A retrieval recipe's collator part is a :class:`RetrievalCollator`, which
hands training splits to a :class:`CaptionCollator`. Evaluation batches carry each image once and *all* its captions, with
``text_image_index`` naming each caption's image, so the task can score every caption against every
image of the split (official ViLT's recall protocol).
"""

from __future__ import annotations

from typing import Any

import torch

from vlp.batch import Batch
from vlp.datamodules.collate import pick_caption
from vlp.datamodules.decode import DecodedSample, SampleDecoder
from vlp.datamodules.finetune import FinetuneCollator
from vlp.datamodules.parts import Decoder, Vocab


class CaptionCollator(FinetuneCollator):
    """Images with one random caption each (``text_ids`` row ``i`` describes image ``i``)."""

    def decoder_type(self) -> type[Decoder]:
        return SampleDecoder

    def collate(self, samples: list[DecodedSample], generator: torch.Generator) -> Batch:
        captions = [pick_caption(s.captions, generator) for s in samples]
        return self.text_image_batch([s.key for s in samples], [s.image for s in samples], captions)


class RetrievalCollator(FinetuneCollator):
    """Evaluation batches: each image once, every caption of it (at most ``max_captions``, in stored
    order) as a text row; ``text_image_index [T]`` names the image row each text describes. A training
    split is collated by a :class:`CaptionCollator` with the same settings (:meth:`for_split`).

    Args:
        max_captions: evaluation reads at most this many captions per image (``None``: all). Evaluation
            scores every text against every image the run reads: cap the cost with the trainer's
            ``limit_val_batches``.
        Others: as :class:`~vlp.datamodules.finetune.FinetuneCollator`.
    """

    def __init__(self, max_captions: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_captions is not None and max_captions < 1:
            raise ValueError(f"max_captions must be positive, got {max_captions}")
        self.max_captions = max_captions

    def decoder_type(self) -> type[Decoder]:
        return SampleDecoder

    def for_split(self, train: bool, seed: int = 0, vocab: Vocab | None = None) -> FinetuneCollator:
        """A :class:`CaptionCollator` for training (caption pairs, negatives drawn by the task), this
        collator for evaluation."""
        if train:
            pairs = CaptionCollator(
                tokenizer=self.tokenizer_name,
                max_text_len=self.max_text_len,
                blank_images=self.blank_images,
                max_logged_skips=self.max_logged_skips,
            )
            return pairs.for_split(train, seed, vocab)
        return super().for_split(train, seed, vocab)

    def collate(self, samples: list[DecodedSample], generator: torch.Generator) -> Batch:
        texts, owners = [], []
        for row, sample in enumerate(samples):
            captions = sample.captions[: self.max_captions]
            texts += captions
            owners += [row] * len(captions)
        return self.text_image_batch(
            [s.key for s in samples],
            [s.image for s in samples],
            texts,
            text_image_index=torch.tensor(owners, dtype=torch.long),
        )
