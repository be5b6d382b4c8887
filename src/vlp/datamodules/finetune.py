"""What the fine-tuning collators (VQA, image pairs, retrieval) share.

Fine-tuning batches carry clean text and no pre-training views. Every fine-tuning collator can blank
the images (``blank_images``: every pixel set to the normalised grey 0, pixel masks kept): the text-only
control, in which a model can only learn what the text alone predicts. A blank batch's pixels are float32
zeros, the model's input as it is (normalised grey has no ``uint8`` value: it is 127.5 of 255), which the
data module's normalisation leaves alone (:func:`~vlp.datamodules.normalise.normalise_batch`).
Unlike the pre-training ``shuffle_images`` control it applies to every split, since a text-only
model is also evaluated without images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vlp.datamodules.collate import SampleCollator, batch_zeros
from vlp.tokenizers import BUNDLED


class FinetuneCollator(SampleCollator):
    """A :class:`~vlp.datamodules.collate.SampleCollator` of clean text whose images can be blanked.

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
        super().__init__(tokenizer, max_text_len, max_logged_skips)
        self.blank_images = blank_images

    def images(self, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Padded ``pixels`` and ``pixel_mask``; with ``blank_images`` the pixels are float32 zeros, the
        normalised grey 0 (in a loader worker new shared memory, never written: :func:`batch_zeros`)."""
        pixels, pixel_mask = super().images(images)
        if self.blank_images:
            pixels = batch_zeros(pixels.shape, torch.float32)
        return pixels, pixel_mask
