"""The parts a :class:`~vlp.datamodules.shards.ShardDataModule` is assembled from.

The data module reads shards (its own settings: root, splits, batch sizes, workers, shuffling, seed);
what a task's batches hold is decided by three parts a recipe names under ``data.init_args``:

- ``transform``: decoded ``uint8`` image -> resized ``uint8`` tensor
  (:class:`~vlp.datamodules.transforms.ViltTransform`);
- ``decoder`` (a :class:`Decoder`): raw sample -> decoded sample, or a skip marker;
- ``collator`` (a :class:`Collator`): decoded samples -> :class:`~vlp.batch.Batch`.

A part's constructor takes only its own settings. What it needs from the run is handed to it when a
split's stream is built: :meth:`Decoder.bind` (the split's transform, the dataset's ``vocab.json``, the
image size limit) and :meth:`Collator.for_split` (whether the split trains, the seed, ``vocab.json``)
return a bound copy of the part, the picklable callable the stream runs in its loader workers. A part
that is not bound refuses to run, so a setting the run owns is never silently taken from a default.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor

from vlp.batch import Batch

Transform = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Vocab:
    """A dataset's ``vocab.json``: named lists of words (``categories``, ``attributes``, ``answers``).

    ``path`` is where the lists were read from (or would be), for the messages that name a missing one.
    """

    path: Path = Path("vocab.json")
    lists: Mapping[str, Any] = field(default_factory=dict)

    def words(self, name: str, needed_for: str | None = None) -> list[str]:
        """The list ``name`` (empty when absent); with ``needed_for``, an absent or empty list is an error
        naming the file, the list and what needs it."""
        value = self.lists.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.path}: {name!r} must be a list of strings")
        if needed_for is not None and not value:
            raise ValueError(
                f"{self.path} has no {name!r} list: {needed_for} "
                "(`python -m vlp data synth shapes` writes one)"
            )
        return value


class Part:
    """What decoders and collators share: a part is bound (a copy given the run's settings) before it runs."""

    _bound = False

    def _bound_copy(self) -> Self:
        bound = copy.copy(self)
        bound._bound = True
        return bound

    def _check_bound(self) -> None:
        if not self._bound:
            method = "bind" if isinstance(self, Decoder) else "for_split"
            raise RuntimeError(
                f"{type(self).__name__} is a data part: call its {method}(...) for the callable a split runs"
            )


class Decoder(Part, ABC):
    """A part: how a raw sample (:func:`~vlp.datamodules.tar_reader.read_shard`) is decoded.

    The bound copy maps a raw sample to what the collator takes, or to a
    :class:`~vlp.datamodules.decode.SkippedSample` saying why not; it never raises for bad data.
    """

    @abstractmethod
    def bind(self, transform: Transform, vocab: Vocab | None, max_image_pixels: int | None) -> Self:
        """A copy that decodes with ``transform`` (the split's), the dataset's ``vocab`` lists (none:
        no lists) and the image size limit (``None``: no limit of vlp's)."""

    @abstractmethod
    def __call__(self, sample: dict[str, Any]) -> Any:
        """The decoded sample or a skip marker (bound copies only)."""


class Collator(Part, ABC):
    """A part: how a split's decoded samples become a :class:`~vlp.batch.Batch`."""

    @abstractmethod
    def decoder_type(self) -> type[Decoder]:
        """The decoder whose samples this collator takes; the data module refuses any other."""

    @abstractmethod
    def for_split(self, train: bool, seed: int = 0, vocab: Vocab | None = None) -> Collator:
        """The collator of one split: a training split (``train``) or an evaluation one, randomness
        seeded by ``seed`` when no generator is passed, word lists from ``vocab`` (none: no lists)."""

    @abstractmethod
    def __call__(self, samples: Sequence[Any], generator: torch.Generator | None = None) -> Batch:
        """The batch of ``samples`` (bound copies only); randomness from ``generator`` when given."""


class CaptionCheck(ABC):
    """A collator part: which images a caption is true of, from the images' annotations (their json).

    Image-text matching draws its mismatched pairs at random, and a caption is sometimes true of the
    other image too ("there is a blue shape"); a collator given a check draws another image for such a
    negative, so its label is right. A dataset whose annotations describe the image can supply one
    (:class:`~vlp.datamodules.synth.truth.ShapesCaptionCheck` for the shapes data).
    """

    @abstractmethod
    def __call__(self, caption: str, annotations: Sequence[Mapping[str, Any]]) -> list[bool]:
        """Per annotation, whether ``caption`` is true of that annotation's image; a ``ValueError`` names
        what cannot be read (a caption or an annotation field the check does not know)."""


class CaptionEditor(ABC):
    """A collator part: captions that each change one thing a caption states (a colour, a shape, a count,
    a side), for image-text matching negatives made from a sample's own image ("hard" negatives).

    A random other image differs from a caption in many ways at once, so ITM can reject it on the easiest
    one; an edit differs in one, so ITM must read that one. The collator keeps an edit only when its
    :class:`CaptionCheck` says it is false of the image (:class:`~vlp.datamodules.synth.edits.ShapesCaptionEditor`
    for the shapes data).
    """

    @abstractmethod
    def edits(self, caption: str) -> list[str]:
        """Every one-change edit of ``caption``, in a fixed order (none for a caption it cannot edit)."""
