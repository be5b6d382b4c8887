"""NLVR2-style batches: two images (left, right), one statement about them, whether it is true.

A pair sample is ``__key__`` + ``left.<ext>`` + ``right.<ext>`` (png, jpg, jpeg or webp) + ``json`` with
``statement`` (str) and ``label`` (bool, or the strings ``"True"``/``"False"`` as NLVR2 writes them).
The shapes generator writes them to the ``pairs_train``, ``pairs_val`` and ``pairs_test`` splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlp.batch import Batch
from vlp.datamodules.decode import ImageDecoder, Unusable, read_json
from vlp.datamodules.finetune import FinetuneCollator
from vlp.datamodules.parts import Decoder

LABELS = {True: 1, False: 0, "true": 1, "false": 0}


@dataclass
class DecodedPair:
    """One decoded pair sample."""

    key: str
    left: Tensor  # [3, H, W]: uint8 from ViltTransform, normalised when collated
    right: Tensor
    statement: str
    label: int  # 1 = the statement is true of the pair


class PairDecoder(ImageDecoder):
    """Raw pair sample -> :class:`DecodedPair`, or a :class:`~vlp.datamodules.decode.SkippedSample`
    naming what is wrong (see :class:`~vlp.datamodules.decode.ImageDecoder`)."""

    def decode(self, key: str, sample: dict[str, Any]) -> DecodedPair:
        left_bytes, right_bytes = self.stored_image(sample, "left"), self.stored_image(sample, "right")
        annotation = read_json(sample["json"]) if "json" in sample else None
        if not isinstance(annotation, dict):
            raise Unusable("missing json object")
        statement = annotation.get("statement")
        label = annotation.get("label")
        label = LABELS.get(label.lower() if isinstance(label, str) else label)
        if not isinstance(statement, str) or not statement.strip() or label is None:
            raise Unusable("json needs a 'statement' string and a true/false 'label'")
        left, right = self.load_image(left_bytes), self.load_image(right_bytes)
        return DecodedPair(key, self.transform(left), self.transform(right), statement.strip(), label)


class PairCollator(FinetuneCollator):
    """Pairs -> ``pixels``/``pixel_mask`` (left), ``pixels_right``/``pixel_mask_right``, the statement as
    ``text_ids``, ``pair_labels`` [B] long."""

    def decoder_type(self) -> type[Decoder]:
        return PairDecoder

    def collate(self, samples: list[DecodedPair], generator: torch.Generator) -> Batch:
        pixels_right, pixel_mask_right = self.images([s.right for s in samples])
        return self.text_image_batch(
            [s.key for s in samples],
            [s.left for s in samples],
            [s.statement for s in samples],
            pixels_right=pixels_right,
            pixel_mask_right=pixel_mask_right,
            pair_labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        )
