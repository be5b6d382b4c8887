"""Several dataset folders read as one: ``root``'s folders and weights, the vocab rule, the mixed stream.

A :class:`~vlp.datamodules.shards.ShardDataModule` whose ``root`` lists several folders (or maps each to a
sampling weight) reads them with these pieces: :func:`root_weights` checks ``root``, :func:`split_sources`
finds each folder's shards of a split, :func:`folder_vocab` picks the one ``vocab.json`` (at most one
folder may hold one, or they must be equal), :func:`folder_weights` sets each folder's sampling weight
(``root``'s mapping, else its samples, from ``manifest.json`` or the shards' headers), and training reads
the folders as one :class:`MixedShardStream` (each next sample drawn from a dataset by a seeded weighted
draw). A single folder goes through the same functions, all but the mixed stream.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import webdataset as wds

from vlp.datamodules.stream import (
    ShardItem,
    ShardStream,
    mixed_seed,
    rank_items,
    reader_workers,
    resampled_samples,
    shared_shards,
)
from vlp.datamodules.tar_reader import shard_sample_count

log = logging.getLogger(__name__)

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MANIFEST_FILE = "manifest.json"  # written by `python -m vlp data convert`: samples per split
ROOT_KEY = "data.init_args.root"

T = TypeVar("T")


def root_weights(root: Any) -> dict[Path, float | None]:
    """``root`` as ``{folder: sampling weight or None}``: one folder, a list of them, or a mapping of
    folders to positive weights; one clear error naming the setting for anything else."""
    if isinstance(root, str | Path):
        entries: list[tuple[Any, Any]] = [(root, None)]
    elif isinstance(root, Mapping):
        entries = list(root.items())
    elif isinstance(root, Sequence):
        entries = [(folder, None) for folder in root]
    else:
        raise TypeError(
            f"{ROOT_KEY} must be a folder, a list of folders or a mapping folder -> weight, "
            f"got {type(root).__name__}"
        )
    if not entries:
        raise ValueError(f"{ROOT_KEY} lists no dataset folder")
    roots: dict[Path, float | None] = {}
    seen: dict[Path, Path] = {}
    for folder, weight in entries:
        if not isinstance(folder, str | Path) or not str(folder):
            raise ValueError(f"{ROOT_KEY}: {folder!r} is not a folder name")
        path = Path(folder).expanduser()
        if weight is not None and (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise ValueError(f"{ROOT_KEY}: the weight of {path} must be a positive number, got {weight!r}")
        same = seen.get(path.resolve())
        if same is not None:
            raise ValueError(f"{ROOT_KEY} lists {same} and {path}, the same folder: list it once")
        seen[path.resolve()] = path
        roots[path] = None if weight is None else float(weight)
    return roots


def root_shards(root: Path, split: str) -> list[str]:
    """Sorted shard paths of ``root/split`` (none when the folder is absent)."""
    folder = root / split
    return sorted(str(p) for p in folder.glob("*") if p.is_file() and p.name.endswith(SHARD_SUFFIXES))


def split_sources(
    roots: Mapping[Path, Any], split: str, every_root: bool, lone_fix: str, report: bool
) -> list[tuple[Path, list[str]]]:
    """``(folder, its sorted shard paths of split)`` for the folders of ``roots`` that have the split, in
    their order; an error when none has it, or with ``every_root`` when one has not (``lone_fix`` is the
    fix the error names for a single folder). ``report`` logs the folders that have none."""
    first = next(iter(roots))
    sources = [(root, root_shards(root, split)) for root in roots]
    present = [(root, urls) for root, urls in sources if urls]
    missing = [root for root, urls in sources if not urls]
    if not present or (every_root and missing):
        folder = (missing[0] if every_root and present else first) / split
        if len(roots) == 1:
            fix = lone_fix
        elif every_root:
            fix = f"every folder of {ROOT_KEY} is read in training: remove it or convert its {split!r} split"
        else:
            fix = f"none of the folders of {ROOT_KEY} ({_paths(roots)}) has a {split!r} split"
        raise FileNotFoundError(f"no shards (*.tar) in {folder}; {fix}")
    if missing and report:
        log.info("vlp: split %r is read from %s (%s have none)", split, _paths(present), _paths(missing))
    return present


def read_vocab(path: Path) -> dict[str, Any]:
    """A ``vocab.json``: a json object of lists; an error naming the file otherwise."""
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exn:
        raise ValueError(f"{path} is not readable json: {exn}") from None
    if not isinstance(vocab, dict):
        raise ValueError(f"{path} must hold a json object of lists, got {type(vocab).__name__}")
    return vocab


def folder_vocab(roots: Iterable[Path]) -> tuple[Path, dict[str, Any]] | None:
    """``(path, lists)`` of the folders' ``vocab.json``, ``None`` when none holds one; at most one folder
    may hold one, or they must be equal (an error naming both files otherwise)."""
    found = [(path, read_vocab(path)) for path in (root / "vocab.json" for root in roots) if path.is_file()]
    if not found:
        return None
    first_path, first = found[0]
    for path, vocab in found[1:]:
        if vocab != first:
            raise ValueError(
                f"{first_path} and {path} differ: of the folders of {ROOT_KEY}, at most one may hold a "
                "vocab.json, or they must be equal; keep the one the task needs and move the other away"
            )
    return first_path, first


def split_samples(root: Path, split: str, urls: Sequence[str]) -> int:
    """Samples of ``root``'s ``split``: the count of its ``manifest.json`` (``vlp data convert`` writes
    it), else counted from the shards' headers (logged: it reads every shard's headers)."""
    manifest = root / MANIFEST_FILE
    try:
        samples = json.loads(manifest.read_text(encoding="utf-8"))["splits"][split]["samples"]
    except (OSError, ValueError, KeyError, TypeError):
        samples = None
    if isinstance(samples, int) and not isinstance(samples, bool) and samples >= 0:
        return samples
    log.info(
        "vlp: counting the samples of %d shard(s) of %s (no %s count)", len(urls), root / split, manifest
    )
    return sum(shard_sample_count(url) for url in urls)


def folder_weights(
    roots: Mapping[Path, float | None], split: str, sources: list[tuple[Path, list[str]]], report: bool
) -> list[float]:
    """The sampling weight of each folder of ``sources`` in training: ``roots``' mapping, else the
    folder's number of samples of ``split`` (:func:`split_samples`). ``report`` logs the shares."""
    weights = [roots[root] for root, _ in sources]
    if all(weight is not None for weight in weights):
        chosen = [float(weight) for weight in weights if weight is not None]
        origin = "set in " + ROOT_KEY
    else:
        chosen = [float(split_samples(root, split, urls)) for root, urls in sources]
        origin = "their samples"
        empty = [root for (root, _), weight in zip(sources, chosen, strict=True) if weight <= 0]
        if empty:
            raise ValueError(
                f"split {split!r} of {_paths(empty)} holds no samples: remove it from {ROOT_KEY}"
            )
    if report:
        total = sum(chosen)
        shares = ", ".join(
            f"{root} {weight / total:.1%}" for (root, _), weight in zip(sources, chosen, strict=True)
        )
        log.info("vlp: training mixes %d folders (weights: %s): %s", len(sources), origin, shares)
    return chosen


def stream_shared_shards(stream: ShardStream, workers: int) -> int:
    """How many shards of ``stream`` every rank reads, keeping a share of their samples."""
    if isinstance(stream, MixedShardStream):
        return sum(shared_shards(len(urls), stream.world_size, workers) for urls in stream.source_urls())
    return shared_shards(len(stream.urls), stream.world_size, workers)


def _paths(items: Iterable[Any]) -> str:
    return ", ".join(str(item[0] if isinstance(item, tuple) else item) for item in items)


_END = object()


def weighted_interleave(
    sources: list[Iterator[T]], weights: Sequence[float], rng: random.Random
) -> Iterator[T]:
    """The items of every source, each next one from a source drawn by ``rng`` with probability
    proportional to its weight among the sources not yet exhausted, until all are."""
    live = list(range(len(sources)))
    while live:
        cumulative = list(itertools.accumulate(weights[i] for i in live))
        pick = min(bisect.bisect_right(cumulative, rng.random() * cumulative[-1]), len(live) - 1)
        item = next(sources[live[pick]], _END)
        if item is _END:
            del live[pick]
            continue
        yield item  # type: ignore[misc]


@dataclass(eq=False)
class MixedShardStream(ShardStream):
    """Several datasets' shards as one training stream: ``urls`` is their concatenation, the first
    ``source_sizes[0]`` shards the first dataset's, and so on.

    Each dataset's shards are shuffled and split by rank and worker exactly as a
    :class:`~vlp.datamodules.stream.ShardStream` splits its own (so every sample is read once per epoch
    without resampling); a worker interleaves its shares of the datasets with
    :func:`weighted_interleave`, drawn from ``(seed, epoch, rank, worker)``, then shuffles the samples in
    its buffer. The raw samples are a function of those coordinates alone, so skipping consumed batches
    by count (resume) is exact. With ``resampled`` each dataset's shards are drawn with replacement,
    endlessly, and the weights are the mixing proportions.
    """

    source_sizes: Sequence[int] = ()
    weights: Sequence[float] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.source_sizes = [int(size) for size in self.source_sizes]
        self.weights = [float(weight) for weight in self.weights]
        if len(self.source_sizes) != len(self.weights) or not self.source_sizes:
            raise ValueError("a mixed stream needs one weight per dataset")
        if sum(self.source_sizes) != len(self.urls) or min(self.source_sizes) < 1:
            raise ValueError(f"source_sizes {self.source_sizes} do not split the {len(self.urls)} shards")
        if not all(math.isfinite(w) and w > 0 for w in self.weights):
            raise ValueError(f"weights must be positive, got {self.weights}")

    def source_urls(self) -> list[list[str]]:
        """Each dataset's shards, in the order of ``urls``."""
        bounds = list(itertools.accumulate(self.source_sizes, initial=0))
        urls = list(self.urls)
        return [urls[start:end] for start, end in itertools.pairwise(bounds)]

    def source_order(self, epoch: int, source: int) -> list[str]:
        """Dataset ``source``'s shard list of the epoch before the rank/worker split (same everywhere)."""
        urls = self.source_urls()[source]
        if self.shuffle:
            random.Random(mixed_seed(self.seed, epoch, source, 7)).shuffle(urls)
        return urls

    def shard_order(self, epoch: int) -> list[str]:
        return [url for source in range(len(self.source_sizes)) for url in self.source_order(epoch, source)]

    def workers_for(self, num_workers: int) -> int:
        """Loader workers per rank that have shards to read: as many as the dataset with the most shards
        per rank occupies (all when resampled)."""
        if self.resampled:
            return max(1, num_workers)
        workers = max(1, num_workers)
        return max(reader_workers(len(urls), self.world_size, workers) for urls in self.source_urls())

    def source_items(
        self, epoch: int, worker: int, num_workers: int, rank: int | None = None
    ) -> list[list[ShardItem]]:
        """What logical ``worker`` of ``rank`` reads of each dataset in ``epoch`` (not resampled)."""
        rank = self.rank if rank is None else rank
        return [
            rank_items(self.source_order(epoch, source), rank, self.world_size, num_workers)[
                worker::num_workers
            ]
            for source in range(len(self.source_sizes))
        ]

    def worker_items(
        self, epoch: int, worker: int, num_workers: int, rank: int | None = None
    ) -> list[ShardItem]:
        return [item for items in self.source_items(epoch, worker, num_workers, rank) for item in items]

    def rank_batches(self, epoch: int, rank: int, num_workers: int) -> int:
        if self.sample_counts is None:
            raise ValueError("rank_batches needs the shards' sample_counts")
        counts = dict(zip(self.urls, self.sample_counts, strict=True))
        total = 0
        for worker in range(num_workers):
            items = self.worker_items(epoch, worker, num_workers, rank)
            batches = -(-sum(item.count(counts[item.url]) for item in items) // self.batch_size)
            total += batches if self.worker_batches is None else min(batches, self.worker_batches)
        return total

    def _resampled_source(self, epoch: int, worker: int, source: int) -> Iterator[dict[str, Any]]:
        """Samples of dataset ``source``'s shards drawn with replacement, endlessly."""
        rng = random.Random(mixed_seed(self.seed, epoch, self.rank, worker, source, 8))
        yield from resampled_samples(self.source_urls()[source], rng)

    def raw_samples(self, epoch: int, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        sources: list[Iterator[dict[str, Any]]]
        if self.resampled:
            sources = [self._resampled_source(epoch, worker, s) for s in range(len(self.source_sizes))]
        else:
            sources = [
                itertools.chain.from_iterable(item.samples() for item in items)
                for items in self.source_items(epoch, worker, num_workers)
            ]
        rng = random.Random(mixed_seed(self.seed, epoch, self.rank, worker, 9))
        samples = weighted_interleave(sources, self.weights, rng)
        if self.shuffle and self.shuffle_buffer > 1:
            buffer_rng = random.Random(mixed_seed(self.seed, epoch, self.rank, worker, 2))
            samples = wds.filters._shuffle(
                samples, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=buffer_rng
            )
        return samples
