"""ERNIE-ViLG data: :class:`~vlp.datamodules.e2e.E2EDataModule` captioning batches plus a predict split.

Text→image and image→text both read ``pixels`` and the chosen caption (``caption_ids``/``caption_mask``);
evaluation reads ``references``. ``python -m vlp predict`` reads ``predict_split`` (its captions are the
prompts, its images are captioned), in order, with the evaluation batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

from vlp.batch import Batch
from vlp.datamodules.e2e import E2EDataModule


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

    def predict_dataloader(self) -> DataLoader:
        """The split's stream loader behind a plain ``DataLoader`` over its batches: Lightning's predict
        loop re-creates its loader with a batch-index sampler, which the stream loader does not take."""
        return DataLoader(Batches(self._loader(self.predict_split, train=False)), batch_size=None)


class Batches(IterableDataset):
    """The batches of an iterable of batches (a loader), as an ``IterableDataset``."""

    def __init__(self, loader: Iterable[Batch]) -> None:
        super().__init__()
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.loader)
