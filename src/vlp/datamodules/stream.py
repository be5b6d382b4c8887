"""A resumable, exactly-partitioned stream of collated batches over webdataset shards.

Why not a plain ``wds.DataPipeline``: webdataset's shuffles draw from per-process state, so a run
cannot be restarted mid-epoch and see the same samples again (its maintainers advise against trying).
Here every random choice is a function of its coordinates instead:

* shard order: ``(seed, epoch)`` — identical in every rank and worker, so the split below is a
  partition (resampled streams draw shards with replacement from ``(seed, epoch, rank, worker)``);
* sample shuffle buffer: ``(seed, epoch, rank, worker)``;
* per-sample transform randomness (RandAugment): ``(seed, epoch, rank, worker, sample index)``;
* per-batch collation randomness (caption choice, ITM negatives, MLM masks):
  ``(seed, epoch, rank, worker, batch index)``.

The split (:func:`rank_items`): the epoch's shard list is dealt out in rounds of ``ranks x workers``
shards, shard ``i`` of a round to rank ``i // workers`` and worker ``i % workers``; the shards of the
last, incomplete round go to the ranks in equal numbers, and the few left over (fewer than the ranks)
are read by every rank, which keeps every ``ranks``-th sample of them (rank ``r`` the ``r``-th). So
every sample is read exactly once per epoch and, with shards of equal size, every rank reads as many
samples as the others, whatever the number of shards. A split with fewer shards than
``ranks x workers`` is read by fewer workers (:func:`reader_workers`), so no worker is left idle.

Each batch carries its ``position = (epoch, worker, index)``; a stream told which batches were consumed
(``skip_batches``) has each worker read past their samples in the tar files *before decoding*. The
:class:`~vlp.datamodules.loader.StreamLoader` that runs a stream keeps that position and resumes there.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from vlp.batch import Batch
from vlp.datamodules.tar_reader import read_shard, shard_sample_count

Collate = Callable[[list[Any], torch.Generator], Batch]


def mixed_seed(*coordinates: int) -> int:
    """A 63-bit seed mixed from integer coordinates (numpy's SeedSequence: no collisions by addition)."""
    return int(np.random.SeedSequence([int(c) for c in coordinates]).generate_state(2, np.uint64)[0] >> 1)


def seed_sample_rngs(seed: int) -> None:
    """Seed the global RNGs a transform may draw from (timm's RandAugment uses ``random`` and numpy).

    Only torch's CPU generator: ``torch.manual_seed`` also queues a CUDA seeding with a captured stack
    trace when CUDA is not initialised, which cost 0.7 ms a sample, a third of the default recipe's
    loading time, for a generator no CPU transform reads.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


@dataclass(frozen=True)
class ShardItem:
    """What one reader reads of a shard: every sample, or with ``keep = (modulus, remainder)`` the
    samples whose index in the shard is ``remainder`` modulo ``modulus``."""

    url: str
    keep: tuple[int, int] | None = None

    def count(self, samples: int) -> int:
        """How many of a shard's ``samples`` this item reads."""
        if self.keep is None:
            return samples
        modulus, remainder = self.keep
        return len(range(remainder, samples, modulus))

    def samples(self) -> Iterator[dict[str, Any]]:
        """The raw samples this item reads."""
        samples = read_shard(self.url)
        if self.keep is None:
            return samples
        modulus, remainder = self.keep
        return itertools.islice(samples, remainder, None, modulus)


def resampled_samples(urls: Sequence[str], rng: random.Random) -> Iterator[dict[str, Any]]:
    """Samples of shards of ``urls`` drawn with replacement by ``rng``, endlessly; an error when none can be
    read at all (``10 * len(urls) + 10`` draws in a row gave no sample)."""
    limit = 10 * len(urls) + 10
    barren = 0  # consecutive draws that gave no sample
    while barren < limit:
        read = 0
        for sample in read_shard(rng.choice(urls)):
            read += 1
            yield sample
        barren = 0 if read else barren + 1
    raise RuntimeError(
        f"no sample could be read from {limit} shards drawn in a row from {len(urls)} shards "
        f"({urls[0]} ...): see the warnings naming each shard"
    )


def rank_items(urls: Sequence[str], rank: int, world_size: int, workers: int) -> list[ShardItem]:
    """What ``rank`` reads of the ordered shard list ``urls`` (see the module docstring); its worker
    ``w`` reads items ``w, w + workers, ...``. The list has the same length on every rank."""
    block = world_size * workers
    full = len(urls) // block * block
    items = [ShardItem(url) for i, url in enumerate(urls[:full]) if i % block // workers == rank]
    rest = urls[full:]
    share = len(rest) // world_size
    items += [ShardItem(url) for url in rest[rank * share : (rank + 1) * share]]
    shared = rest[world_size * share :]
    keep = (world_size, rank) if world_size > 1 else None
    items += [ShardItem(url, keep) for url in shared]
    return items


def reader_workers(num_shards: int, world_size: int, workers: int) -> int:
    """Loader workers per rank for a split of ``num_shards`` shards (not resampled): ``workers``, or as
    many as :func:`rank_items` gives a rank items to read when that is fewer."""
    block = world_size * workers
    rest = num_shards % block
    per_rank = num_shards // block * workers + rest // world_size + rest % world_size
    return max(1, min(workers, per_rank))


def shared_shards(num_shards: int, world_size: int, workers: int) -> int:
    """How many shards every rank reads (keeping a share of their samples) in :func:`rank_items`."""
    if world_size == 1:
        return 0
    return num_shards % (world_size * workers) % world_size


@dataclass(eq=False)  # compared and hashed by identity, as a dataset
class ShardStream(IterableDataset):
    """Batches from shards, each worker's order a function of ``(seed, epoch, rank, worker)``.

    Args:
        urls: shard paths or URLs.
        decode: raw sample (:func:`~vlp.datamodules.tar_reader.read_shard`) → what ``collate`` takes
            (never raises for bad data).
        collate: ``(decoded samples, generator) → Batch``.
        batch_size: samples per batch; every batch but a worker's last consumes exactly this many
            raw samples, which is what makes skipping by count exact.
        shuffle: shuffle the shard order and the samples (``shuffle_buffer``).
        resampled: draw shards with replacement, endlessly; ``worker_batches`` must then be set.
        worker_batches: at most this many batches per worker and epoch.
        rank, world_size: this process's place among the data-parallel ranks.
        sample_counts: samples per shard (same order as ``urls``), when known; needed to give every
            rank the same number of batches without resampling (:meth:`common_batches`).
    """

    urls: Sequence[str]
    decode: Callable[[dict[str, Any]], Any]
    collate: Collate
    batch_size: int
    _: KW_ONLY
    shuffle: bool = False
    shuffle_buffer: int = 1000
    resampled: bool = False
    worker_batches: int | None = None
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    sample_counts: Sequence[int] | None = None
    # Set by StreamLoader before each pass (workers receive a pickled copy at iterator creation):
    # the epoch, the batches each logical worker already consumed, and the rotation (physical worker p
    # plays logical worker (p + rotation) % num_workers).
    epoch: int = field(default=0, init=False)
    skip_batches: dict[int, int] = field(default_factory=dict, init=False)
    rotation: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.resampled and self.worker_batches is None:
            raise ValueError("a resampled stream is endless: set worker_batches")
        if not self.urls:
            raise ValueError("a stream needs at least one shard")
        self.urls = list(self.urls)
        self.sample_counts = None if self.sample_counts is None else list(self.sample_counts)

    def shard_order(self, epoch: int) -> list[str]:
        """The epoch's shard list before the rank/worker split (same in every process)."""
        urls = list(self.urls)
        if self.shuffle:
            random.Random(mixed_seed(self.seed, epoch)).shuffle(urls)
        return urls

    def workers_for(self, num_workers: int) -> int:
        """Loader workers per rank that have shards to read, of ``num_workers`` (all when resampled)."""
        if self.resampled:
            return max(1, num_workers)
        return reader_workers(len(self.urls), self.world_size, max(1, num_workers))

    def worker_items(
        self, epoch: int, worker: int, num_workers: int, rank: int | None = None
    ) -> list[ShardItem]:
        """What logical ``worker`` of ``rank`` (default: this rank) reads in ``epoch`` (not resampled)."""
        rank = self.rank if rank is None else rank
        return rank_items(self.shard_order(epoch), rank, self.world_size, num_workers)[worker::num_workers]

    def rank_batches(self, epoch: int, rank: int, num_workers: int) -> int:
        """How many batches ``rank`` yields in ``epoch`` (needs :attr:`sample_counts`; not resampled)."""
        if self.sample_counts is None:
            raise ValueError("rank_batches needs the shards' sample_counts")
        counts = dict(zip(self.urls, self.sample_counts, strict=True))
        items = rank_items(self.shard_order(epoch), rank, self.world_size, num_workers)
        total = 0
        for worker in range(num_workers):
            samples = sum(item.count(counts[item.url]) for item in items[worker::num_workers])
            batches = -(-samples // self.batch_size)
            total += batches if self.worker_batches is None else min(batches, self.worker_batches)
        return total

    def common_batches(self, epoch: int, num_workers: int) -> int:
        """The number of batches every rank can run in ``epoch``: the smallest rank's."""
        return min(self.rank_batches(epoch, rank, num_workers) for rank in range(self.world_size))

    def _resampled_samples(self, epoch: int, worker: int) -> Iterator[dict[str, Any]]:
        """Samples of shards drawn with replacement, endlessly; an error when none can be read at all."""
        rng = random.Random(mixed_seed(self.seed, epoch, self.rank, worker, 1))
        yield from resampled_samples(self.urls, rng)

    def raw_samples(self, epoch: int, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """Undecoded samples of logical ``worker`` in this epoch, in their (shuffled) order."""
        if self.resampled:
            samples = self._resampled_samples(epoch, worker)
        else:
            items = self.worker_items(epoch, worker, num_workers)
            samples = itertools.chain.from_iterable(item.samples() for item in items)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(mixed_seed(self.seed, epoch, self.rank, worker, 2))
            samples = wds.filters._shuffle(
                samples, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng
            )
        return samples

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        physical, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        worker = (physical + self.rotation) % num_workers
        epoch = self.epoch
        skip = self.skip_batches.get(worker, 0)
        if self.worker_batches is not None and skip >= self.worker_batches:
            return
        raw = self.raw_samples(epoch, worker, num_workers)
        for _ in range(skip * self.batch_size):  # read past consumed samples without decoding them
            if next(raw, None) is None:
                return
        index = skip
        sample_index = skip * self.batch_size
        while self.worker_batches is None or index < self.worker_batches:
            chunk = []
            for sample in raw:
                seed_sample_rngs(mixed_seed(self.seed, epoch, self.rank, worker, sample_index, 3))
                chunk.append(self.decode(sample))
                sample_index += 1
                if len(chunk) == self.batch_size:
                    break
            if not chunk:
                return
            generator = torch.Generator().manual_seed(
                mixed_seed(self.seed, epoch, self.rank, worker, index, 5)
            )
            batch = self.collate(chunk, generator)
            yield replace(batch, position=(epoch, worker, index))
            index += 1


def local_sample_counts(urls: Sequence[str]) -> list[int]:
    """Samples per shard for local shard files; a clear error for URLs that are not local files."""
    missing = [url for url in urls if not Path(url).is_file()]
    if missing:
        raise ValueError(
            f"cannot count the samples of non-local shards {missing[:3]}: with several ranks and no "
            "resampling, every rank must run the same number of batches; use resampled=True with epoch_samples"
        )
    return [shard_sample_count(url) for url in urls]
