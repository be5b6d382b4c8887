"""ViLT's pixel normalisation, applied to a batch once it is on the device the model runs on.

The loaders yield ``uint8`` pixels (:func:`~vlp.datamodules.collate.pad_images`: the resized images,
zero-padded, with their ``pixel_mask``). :class:`~vlp.datamodules.shards.ShardDataModule` turns them into
the model's float32 inputs in its ``on_after_batch_transfer`` hook, which Lightning calls for fit,
validate, test and predict, with :func:`normalise_batch`: real pixels ``x * 2/255 - 1`` (ViLT's mean =
std = 0.5), padding ``0.0``. A batch's pixels are made once in a loader worker as ``uint8``, a quarter of
the bytes of floats, so the hand-off to the main process and the copy to a GPU move 4x less, and the
float work runs on the device. Code that iterates a loader itself (outside a trainer) calls
:func:`normalise_batch` on each batch to get what the model is given.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from vlp.batch import Batch

IMAGE_FIELDS = (("pixels", "pixel_mask"), ("pixels_right", "pixel_mask_right"))
"""The batch's image tensors and their pixel masks."""


def normalise_pixels(pixels: Tensor, pixel_mask: Tensor | None = None) -> Tensor:
    """Float32 model inputs of ``uint8 [B, 3, H, W]`` padded pixels, on their device: real pixels (where
    ``pixel_mask [B, H, W]`` is True) scaled to ``[0, 1]`` and normalised with ViLT's mean = std = 0.5,
    padding ``0.0`` (positive zero) whatever its ``uint8`` value. Without ``pixel_mask`` every pixel is
    real (one image, or images of one size: ``normalise_pixels(ViltTransform(...)(image)[None])``).

    The values are torchvision's ``normalize(to_dtype(pixels, float32, scale=True), mean, std)`` bit for
    bit, in fewer passes: ``(x * (1/255) - 0.5) / 0.5`` is ``x * (2/255) - 1`` with every rounding doubled,
    and doubling is exact in binary floating point. Each element is an exact cast, one float32 multiply by
    ``float32(2/255)`` and one subtraction, as separate operations (no fused multiply-add), so every device
    gives the same bits. The cast comes first because a ``uint8`` operand would send the multiply down
    PyTorch's slower mixed-dtype path on the CPU.
    """
    if pixels.dtype != torch.uint8:
        raise ValueError(f"normalise_pixels takes uint8 pixels, got {pixels.dtype}")
    if pixels.ndim != 4 or (
        pixel_mask is not None and pixel_mask.shape != (pixels.shape[0], *pixels.shape[2:])
    ):
        raise ValueError(
            f"pixel_mask {None if pixel_mask is None else list(pixel_mask.shape)} does not match pixels "
            f"{list(pixels.shape)} "
            "(they must be [B, H, W] and [B, C, H, W])"
        )
    out = pixels.to(torch.float32)
    out.mul_(2.0 / 255)
    out.sub_(1.0)
    return out if pixel_mask is None else out.masked_fill_(~pixel_mask.unsqueeze(1), 0.0)


def normalise_batch(batch: Any) -> Any:
    """The batch the model is given: a :class:`~vlp.batch.Batch`'s ``uint8`` images (``pixels``,
    ``pixels_right``) normalised on their device (:func:`normalise_pixels`); float images, which are model
    inputs already (the ``blank_images`` control's zeros, hand-made batches), and anything that is not a
    ``Batch`` come back as they are."""
    if not isinstance(batch, Batch):
        return batch
    normalised = {}
    for name, mask_name in IMAGE_FIELDS:
        pixels = getattr(batch, name)
        if pixels is None or pixels.dtype != torch.uint8:
            continue
        pixel_mask = getattr(batch, mask_name)
        if pixel_mask is None:
            raise ValueError(
                f"batch.{name} is uint8 but batch.{mask_name} is None: padding cannot be told apart"
            )
        normalised[name] = normalise_pixels(pixels, pixel_mask)
    return replace(batch, **normalised) if normalised else batch
