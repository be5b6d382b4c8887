"""Webdataset shards as a LightningDataModule: one reader, assembled with a task's parts.

A dataset folder holds one subfolder of ``*.tar`` shards per split and, for tasks that classify over
categories, attributes or answers, a ``vocab.json``. Every split is read as a
:class:`~vlp.datamodules.stream.ShardStream` (tar reader, shard shuffle, split by rank and by worker,
sample shuffle, decode, collate) behind a :class:`~vlp.datamodules.loader.StreamLoader`. What a task's
batches hold is up to the parts (:mod:`vlp.datamodules.parts`): the image ``transform``, the ``decoder``
and the ``collator``. Pre-training is a :class:`~vlp.datamodules.decode.SampleDecoder` with a
:class:`~vlp.datamodules.collate.PretrainCollator`; E2E-VLP, VQA, image pairs and retrieval have their
own decoders and collators (:mod:`~vlp.datamodules.e2e`, :mod:`~vlp.datamodules.vqa`,
:mod:`~vlp.datamodules.pairs`, :mod:`~vlp.datamodules.retrieval`).

Several dataset folders are read at once when ``root`` lists them (or maps each to a sampling weight):
training mixes their splits into one stream (:class:`~vlp.datamodules.mixed.MixedShardStream`, each next
sample drawn from a dataset by a seeded weighted draw), evaluation reads each folder's split in turn; a
``vocab.json`` may be carried by one folder, or by several when they are equal. :mod:`~vlp.datamodules.mixed`
holds these multi-folder pieces.

All randomness is a function of ``(seed, epoch, rank, worker, position)``: without resampling one epoch
covers every sample exactly once across ranks and workers, and a run resumed from a checkpoint continues
with exactly the batches an uninterrupted run would have seen (the position is saved by Lightning's
stateful-loader hooks).

Decoding runs in the loader workers and never raises for a bad sample: a sample that cannot be used
becomes a :class:`~vlp.datamodules.decode.SkippedSample` that the collator counts into
``Batch.num_skipped`` and logs with its key and reason; the DataModule keeps the running total in
:attr:`ShardDataModule.num_skipped` (tallied in ``on_before_batch_transfer``, in the main process). A
shard that cannot be read is reported by name and the stream goes on with the next one
(:mod:`vlp.datamodules.tar_reader`).

Batches leave the loader with ``uint8`` pixels; ``on_after_batch_transfer`` normalises them into the
model's float32 inputs on the model's device (:func:`~vlp.datamodules.normalise.normalise_batch`), for
fit, validate, test and predict alike. Code that iterates a loader itself calls ``normalise_batch``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from vlp.batch import Batch
from vlp.datamodules.decode import MAX_IMAGE_PIXELS
from vlp.datamodules.loader import StreamLoader
from vlp.datamodules.mixed import (
    ROOT_KEY,
    MixedShardStream,
    folder_vocab,
    folder_weights,
    root_weights,
    split_sources,
    stream_shared_shards,
)
from vlp.datamodules.normalise import normalise_batch
from vlp.datamodules.parts import Collator, Decoder, Vocab
from vlp.datamodules.stream import ShardStream, local_sample_counts
from vlp.datamodules.synth.folder import shapes_folder_state
from vlp.datamodules.synth.scenes import ShapesConfig
from vlp.datamodules.synth.shapes import write_shapes
from vlp.datamodules.transforms import ViltTransform

log = logging.getLogger(__name__)


def _synth_command(root: Path) -> str:
    return f"python -m vlp data synth shapes --out {root}"


class ShardDataModule(L.LightningDataModule):
    """Batches (:class:`~vlp.batch.Batch`) from webdataset shards, made by the recipe's parts.

    Args:
        root: dataset folder with one subfolder of ``*.tar`` shards per split and, for tasks that classify
            over categories, attributes or answers, a ``vocab.json`` listing them. Several folders: a list
            of them, or a mapping folder -> sampling weight. Training then reads every folder's training
            split, mixed into one stream: each next sample of a loader worker comes from a folder drawn
            with probability proportional to its weight (by default its number of training samples, from
            the ``manifest.json`` ``vlp data convert`` writes, else counted from the shards), among the
            folders that still have samples this epoch. Without ``resampled`` an epoch still reads every
            sample of every folder once (the weights set how they are interleaved); with ``resampled`` the
            weights are the mixing proportions. Validation, test and predict read the split of each
            folder that has one, folder after folder. At most one folder may hold a ``vocab.json``, or
            they must be equal.
        transform: the image transform (:class:`~vlp.datamodules.transforms.ViltTransform`); its
            RandAugment applies to training only.
        decoder: raw sample -> decoded sample (a :class:`~vlp.datamodules.parts.Decoder`).
        collator: decoded samples -> batch (a :class:`~vlp.datamodules.parts.Collator`); it must take the
            decoder's samples (:meth:`~vlp.datamodules.parts.Collator.decoder_type`).
        train_split, val_split, test_split: subfolder names of the splits.
        predict_split: the split ``predict`` reads (default: ``test_split``), in order.
        synth: the shapes generator's settings: ``prepare_data`` generates the shapes dataset into ``root``
            when ``root`` is absent or empty, and reuses it when the generator wrote it with these settings.
            Any other folder stops the run with an error naming the setting to change: set ``synth: null``
            (``--data.init_args.synth=null``) to read your own shards, which vlp never writes into or deletes.
        batch_size: training batch size per rank; ``eval_batch_size`` for val/test/predict (defaults to it).
        num_workers: DataLoader workers per rank. A split with fewer shards than ranks x workers is read by
            fewer workers (logged), and shards fewer than the ranks are read by every rank, each keeping
            its share of the samples: every sample is read once per epoch with any number of shards.
        shuffle_buffer: training sample shuffle buffer (per worker); 0 or 1 turns sample shuffling off.
        resampled: draw training shards with replacement, endlessly (needs ``epoch_samples``).
        epoch_samples: training samples per rank and epoch, rounded up to whole batches per worker. Needed
            with ``resampled``; without it, several ranks run as many batches as the smallest rank has
            (counted from the local shards' headers, the rest logged as left out), so that every rank runs
            the same number of batches.
        seed: seeds the shard and sample shuffles and the collator. Validation and test batches (order,
            ITM negatives, MLM masks, any random choice) depend on it alone: they are the same on every pass.
        max_image_pixels: images with more pixels (width x height, read from the header) are skipped as
            too large before they are decoded (a decompression-bomb guard); ``None`` lifts the limit.
    """

    def __init__(
        self,
        root: str | list[str] | dict[str, float],
        transform: ViltTransform,
        decoder: Decoder,
        collator: Collator,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        predict_split: str | None = None,
        synth: ShapesConfig | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        epoch_samples: int | None = None,
        seed: int = 0,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__()
        check_parts(transform, decoder, collator)
        if max_image_pixels is not None and max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be positive or None, got {max_image_pixels}")
        if resampled and epoch_samples is None:
            raise ValueError(
                "resampled=True streams endlessly: set epoch_samples (samples per rank and epoch)"
            )
        if epoch_samples is not None and epoch_samples < 1:
            raise ValueError(f"epoch_samples must be positive, got {epoch_samples}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be non-negative, got {num_workers}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.roots = root_weights(root)
        if synth is not None and len(self.roots) > 1:
            raise ValueError(
                f"{ROOT_KEY} lists {len(self.roots)} folders, but synth generates one dataset folder: "
                "set data.init_args.synth=null to read converted datasets, or root to one folder"
            )
        self.root = next(iter(self.roots))  # the only folder, or the first one
        self.transform = transform
        self.decoder = decoder
        self.collator = collator
        self.train_split = train_split
        self.val_split = val_split
        self.test_split = test_split
        self.predict_split = test_split if predict_split is None else predict_split
        self.synth = synth
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.epoch_samples = epoch_samples
        self.seed = seed
        self.max_image_pixels = max_image_pixels
        self.vocab: dict[str, Any] = {}
        self.vocab_path = self.root / "vocab.json"
        self.num_skipped = 0
        self._train_loader: StreamLoader | None = None

    def prepare_data(self) -> None:
        """With ``synth`` set, generate the shapes dataset into ``root`` or check that it holds it (see
        ``synth``); a folder the generator did not write raises, naming the settings to change."""
        if self.synth is None:
            return
        if shapes_folder_state(self.root).kind in ("absent", "empty", "incomplete"):
            total = sum(self.synth.split_sizes().values())
            log.info("vlp: shapes dataset not found at %s, generating it (%d samples) ...", self.root, total)
        write_shapes(
            self.root, self.synth, root_setting="data.init_args.root", synth_setting="data.init_args.synth"
        )

    def setup(self, stage: str | None = None) -> None:
        """Check the dataset folders and load their ``vocab.json`` (optional: captions-only data needs
        none) into :attr:`vocab`; of several folders, at most one may hold one, or they must be equal."""
        for root in self.roots:
            if not root.is_dir():
                hint = (
                    f"write one with `{_synth_command(root)}` or set `synth` to generate the shapes dataset there"
                    if len(self.roots) == 1
                    else f"convert a dataset there (`python -m vlp data convert`) or remove it from {ROOT_KEY}"
                )
                raise FileNotFoundError(f"dataset folder {root} does not exist; {hint}")
        found = folder_vocab(self.roots)
        if found is None:
            if self._world()[0] == 0:
                where = f"{self.root} has" if len(self.roots) == 1 else f"none of {self._roots_text()} has"
                log.info("vlp: %s no vocab.json: no category, attribute or answer lists", where)
            self.vocab = {}
            self.vocab_path = self.root / "vocab.json"
            return
        self.vocab_path, self.vocab = found

    def train_dataloader(self) -> StreamLoader:
        return self._loader(self.train_split, train=True)

    def val_dataloader(self) -> StreamLoader:
        return self._loader(self.val_split, train=False)

    def test_dataloader(self) -> StreamLoader:
        return self._loader(self.test_split, train=False)

    def predict_dataloader(self) -> DataLoader:
        """``predict`` reads ``predict_split`` as an evaluation split (in order, every sample), behind a
        plain ``DataLoader`` over its batches: Lightning's predict loop rebuilds a ``DataLoader`` with a
        batch-index sampler, which the stream loader does not take."""
        return DataLoader(Batches(self._loader(self.predict_split, train=False)), batch_size=None)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Tally skipped samples (main process) and, in training, record the batch as consumed.

        Lightning calls this for the batch a step is about to use, after its one-batch prefetch, so the
        recorded position is exactly what a checkpoint taken after this step has consumed.
        """
        if isinstance(batch, Batch):
            self.num_skipped += batch.num_skipped
            trainer = self.trainer
            if self._train_loader is not None and trainer is not None and trainer.training:
                self._train_loader.consumed(batch)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The batch the model is given: its ``uint8`` pixels normalised on the device it was moved to
        (:func:`~vlp.datamodules.normalise.normalise_batch`)."""
        return normalise_batch(batch)

    def shards(self, split: str) -> list[str]:
        """Sorted shard paths of ``split``, folder after folder; a clear error when there are none."""
        return [url for _, urls in self.split_sources(split, every_root=False) for url in urls]

    def split_sources(self, split: str, every_root: bool) -> list[tuple[Path, list[str]]]:
        """``(folder, its sorted shard paths of split)`` for the folders that have the split, in the order
        of ``root``; an error when none has it, or with ``every_root`` when one has not."""
        lone_fix = (
            f"write a dataset with `{_synth_command(self.root)}` "
            f"or point root at a folder with a {split!r} split of webdataset shards"
        )
        return split_sources(self.roots, split, every_root, lone_fix, report=self._world()[0] == 0)

    def _roots_text(self) -> str:
        return ", ".join(str(root) for root in self.roots)

    def _world(self) -> tuple[int, int]:
        """``(rank, world size)`` of the data-parallel group (``(0, 1)`` outside a trainer)."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _sharded_model(self) -> bool:
        """Whether the trainer's strategy shards the model (FSDP): every forward pass is then a collective,
        so evaluation too must run the same number of batches on every rank."""
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

        strategy = None if self.trainer is None else self.trainer.strategy
        return isinstance(strategy, FSDPStrategy | ModelParallelStrategy | DeepSpeedStrategy)

    def _worker_batches(self) -> int | None:
        """Per-worker batches per epoch from ``epoch_samples`` (per rank), rounded up to whole batches."""
        if self.epoch_samples is None:
            return None
        workers = max(1, self.num_workers)
        return math.ceil(self.epoch_samples / (workers * self.batch_size))

    def stream(self, split: str, train: bool) -> ShardStream:
        """The split's :class:`~vlp.datamodules.stream.ShardStream` for this rank.

        With several ranks and no resampling, the local shards' samples are counted so that every rank
        runs the same number of batches: in training, and in evaluation when the model is sharded (each
        forward pass is a collective). Otherwise evaluation reads every sample, and a rank may run a batch
        more than another (harmless under DDP).
        """
        sources = self.split_sources(split, every_root=train)
        urls = [url for _, source_urls in sources for url in source_urls]
        rank, world_size = self._world()
        resampled = train and self.resampled
        counts = None
        if world_size > 1 and not resampled and (train or self._sharded_model()):
            counts = local_sample_counts(urls)
        vocab = self.vocab_lists()
        settings: dict[str, Any] = {
            "decode": self.decoder.bind(self.transform.for_split(train), vocab, self.max_image_pixels),
            "collate": self.collator.for_split(train, self.seed, vocab),
            "batch_size": self.batch_size if train else self.eval_batch_size,
            "shuffle": train,
            "shuffle_buffer": self.shuffle_buffer,
            "resampled": resampled,
            "worker_batches": self._worker_batches() if train else None,
            "seed": self.seed,
            "rank": rank,
            "world_size": world_size,
            "sample_counts": counts,
        }
        if not train or len(sources) == 1:
            return ShardStream(urls, **settings)
        return MixedShardStream(
            urls,
            **settings,
            source_sizes=[len(source_urls) for _, source_urls in sources],
            weights=self.mixing_weights(split, sources),
        )

    def mixing_weights(self, split: str, sources: list[tuple[Path, list[str]]]) -> list[float]:
        """The sampling weight of each folder in training: ``root``'s mapping, else the folder's number of
        samples of ``split`` (its ``manifest.json``'s count, else counted from the shards' headers)."""
        return folder_weights(self.roots, split, sources, report=self._world()[0] == 0)

    def vocab_lists(self) -> Vocab:
        """``vocab.json``'s lists (read by :meth:`setup`), as the parts are given them."""
        return Vocab(self.vocab_path, self.vocab)

    def _loader(self, split: str, train: bool) -> StreamLoader:
        """The split's loader; evaluation loaders (``train=False``) repeat the same batches every pass."""
        stream = self.stream(split, train)
        workers = self._reader_workers(split, stream)
        loader = StreamLoader(
            stream,
            num_workers=workers,
            equalise_ranks=stream.sample_counts is not None,
            repeat=not train,
        )
        if train:
            self._train_loader = loader
        return loader

    def _reader_workers(self, split: str, stream: ShardStream) -> int:
        """Loader workers for ``split``: ``num_workers``, or fewer when its shards cannot occupy them all
        (logged once, by rank 0, with how shards are shared when they are fewer than the ranks)."""
        readers = max(1, self.num_workers)  # 0 workers: the main process reads
        workers = stream.workers_for(readers)
        shared = 0 if stream.resampled else stream_shared_shards(stream, workers)
        if (workers < readers or shared) and stream.rank == 0:
            fewer = f": reading it with {workers} worker(s) per rank" if workers < readers else ""
            sharing = (
                f"; {shared} shard(s) are read by every rank, each keeping 1 sample in {stream.world_size}"
                if shared
                else ""
            )
            log.info(
                "vlp: split %r of %s has %d shard(s) for %d rank(s) x %d reader(s)%s%s",
                split,
                self._roots_text(),
                len(stream.urls),
                stream.world_size,
                readers,
                fewer,
                sharing,
            )
        return 0 if self.num_workers == 0 else workers


def check_parts(transform: Any, decoder: Any, collator: Any) -> None:
    """Refuse parts of the wrong kind, or a collator that does not take the decoder's samples, naming the
    recipe keys (``data.init_args.transform`` / ``decoder`` / ``collator``)."""
    for key, part, kind in (
        ("transform", transform, ViltTransform),
        ("decoder", decoder, Decoder),
        ("collator", collator, Collator),
    ):
        if not isinstance(part, kind):
            raise TypeError(
                f"data.init_args.{key} must be a {kind.__module__}.{kind.__qualname__}, "
                f"got {type(part).__name__}"
            )
    needed = collator.decoder_type()
    if not isinstance(decoder, needed):
        raise ValueError(
            f"data.init_args.collator {type(collator).__name__} takes the samples of a {needed.__name__}, "
            f"but data.init_args.decoder is a {type(decoder).__name__}: set data.init_args.decoder to "
            f"{needed.__module__}.{needed.__qualname__}"
        )


class Batches(IterableDataset):
    """The batches of an iterable of batches (a loader), as an ``IterableDataset``."""

    def __init__(self, loader: Iterable[Batch]) -> None:
        super().__init__()
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.loader)
