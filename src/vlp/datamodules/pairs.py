"""NLVR2-style batches: two images (left, right), one statement about them, whether it is true.

A pair sample is ``__key__`` + ``left.<ext>`` + ``right.<ext>`` (png, jpg, jpeg or webp) + ``json`` with
``statement`` (str) and ``label`` (bool, or the strings ``"True"``/``"False"`` as NLVR2 writes them).
The shapes generator writes them to the ``pairs_train``, ``pairs_val`` and ``pairs_test`` splits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Self

import torch
from torch import Tensor

from vlp.batch import Batch
from vlp.datamodules.decode import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    SkippedSample,
    decode_image,
    image_failure,
)
from vlp.datamodules.finetune import FinetuneCollator
from vlp.datamodules.parts import Decoder, Transform, Vocab
from vlp.datamodules.tar_reader import SKIP

LABELS = {True: 1, False: 0, "true": 1, "false": 0}


@dataclass
class DecodedPair:
    """One decoded pair sample."""

    key: str
    left: Tensor  # [3, H, W] float, normalised
    right: Tensor
    statement: str
    label: int  # 1 = the statement is true of the pair


class PairDecoder(Decoder):
    """Raw pair sample -> :class:`DecodedPair`, or a :class:`SkippedSample` naming what is wrong."""

    def __init__(self) -> None:
        self.transform: Transform | None = None
        self.max_image_pixels: int | None = MAX_IMAGE_PIXELS

    def bind(
        self,
        transform: Transform,
        vocab: Vocab | None = None,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> Self:
        bound = self._bound_copy()
        bound.transform = transform
        bound.max_image_pixels = max_image_pixels
        return bound

    def __call__(self, sample: dict[str, Any]) -> DecodedPair | SkippedSample:
        self._check_bound()
        key = str(sample.get("__key__", "?"))
        if SKIP in sample:
            return SkippedSample(key, str(sample[SKIP]))
        images = {}
        for side in ("left", "right"):
            data = next(
                (sample[f"{side}.{ext}"] for ext in IMAGE_EXTENSIONS if f"{side}.{ext}" in sample), None
            )
            if data is None:
                return SkippedSample(key, f"no {side} image ({side}.{'/'.join(IMAGE_EXTENSIONS)})")
            images[side] = data
        try:
            annotation = json.loads(sample["json"]) if "json" in sample else None
        except (ValueError, UnicodeDecodeError) as exn:
            return SkippedSample(key, f"unreadable json: {exn}")
        if not isinstance(annotation, dict):
            return SkippedSample(key, "missing json object")
        statement = annotation.get("statement")
        label = annotation.get("label")
        label = LABELS.get(label.lower() if isinstance(label, str) else label)
        if not isinstance(statement, str) or not statement.strip() or label is None:
            return SkippedSample(key, "json needs a 'statement' string and a true/false 'label'")
        try:
            left, right = (decode_image(images[side], self.max_image_pixels) for side in ("left", "right"))
        # PIL signals corrupt data with many exception types (OSError, SyntaxError, ValueError, ...).
        except Exception as exn:
            return SkippedSample(key, image_failure(exn))
        return DecodedPair(key, self.transform(left), self.transform(right), statement.strip(), label)


class PairCollator(FinetuneCollator):
    """Pairs -> ``pixels``/``pixel_mask`` (left), ``pixels_right``/``pixel_mask_right``, the statement as
    ``text_ids``, ``pair_labels`` [B] long."""

    def decoder_type(self) -> type[Decoder]:
        return PairDecoder

    def collate(self, samples: list[DecodedPair], generator: torch.Generator) -> Batch:
        pixels, pixel_mask = self.images([s.left for s in samples])
        pixels_right, pixel_mask_right = self.images([s.right for s in samples])
        statements = [s.statement for s in samples]
        text_ids, text_mask = self.encode(statements)
        return Batch(
            keys=[s.key for s in samples],
            pixels=pixels,
            pixel_mask=pixel_mask,
            pixels_right=pixels_right,
            pixel_mask_right=pixel_mask_right,
            text_ids=text_ids,
            text_mask=text_mask,
            pair_labels=torch.tensor([s.label for s in samples], dtype=torch.long),
            captions=statements,
        )
