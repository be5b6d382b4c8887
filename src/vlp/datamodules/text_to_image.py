"""ERNIE-ViLG data: :class:`~vlp.datamodules.e2e.E2EDataModule` captioning batches plus a predict split.

Text→image and image→text both read ``pixels`` and the chosen caption (``caption_ids``/``caption_mask``);
evaluation reads ``references``. ``python -m vlp predict`` reads ``predict_split`` (its captions are the
prompts, its images are captioned), in order, with the evaluation batch size.
"""

from __future__ import annotations

from typing import Any

from vlp.datamodules.e2e import E2EDataModule
from vlp.datamodules.stream import StreamLoader


class TextToImageDataModule(E2EDataModule):
    """E2E-VLP's captioning batches (set ``detection: false``, ``itm: false``, ``mlm_probability: 0``)
    with a ``predict_dataloader`` over ``predict_split``.

    Args:
        predict_split: subfolder of shards read by ``predict``.
        Others: as :class:`~vlp.datamodules.e2e.E2EDataModule`.
    """

    def __init__(self, *args: Any, predict_split: str = "test", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.captioning:
            raise ValueError(
                "TextToImageDataModule needs captioning: true (captions are the prompts and targets)"
            )
        self.predict_split = predict_split

    def predict_dataloader(self) -> StreamLoader:
        return self._loader(self.predict_split, train=False)
