from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from shard_helpers import data_module, shards_of, write_dataset

from vlp.batch import Batch
from vlp.datamodules.loader import StreamLoader
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.tar_reader import shard_sample_count

SMALL = {"batch_size": 4, "shuffle_buffer": 6}


def datamodule(root: Path, rank: int = 0, world_size: int = 1, **kwargs: Any) -> ShardDataModule:
    dm = data_module(root, **{**SMALL, **kwargs})
    dm.setup("fit")
    dm._world = lambda: (rank, world_size)  # type: ignore[method-assign]  # what a trainer would report
    return dm


def assert_same_batches(a: list[Batch], b: list[Batch]) -> None:
    assert [x.keys for x in a] == [y.keys for y in b]
    for x, y in zip(a, b, strict=True):
        assert x.position == y.position
        for name in ("pixels", "text_ids", "text_mask", "itm_labels", "mlm_labels"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


def resumed_batches(make_loader: Callable[[], StreamLoader], stop: int, count: int) -> list[Batch]:
    """Stop a fresh loader after ``stop`` consumed batches (one more prefetched, as Lightning does), save its
    position, resume it in another fresh loader: the batches seen and those that follow, ``count`` at least
    (into the next epochs)."""
    first = make_loader()
    seen: list[Batch] = []
    while len(seen) < stop:
        iterator = iter(first)
        for batch in iterator:
            first.consumed(batch)
            seen.append(batch)
            if len(seen) == stop:
                next(iterator, None)  # prefetched, never used: must not count as consumed
                break
    state = json.loads(json.dumps(first.state_dict()))  # survives serialisation

    second = make_loader()
    second.load_state_dict(state)
    resumed = seen + list(second)
    while len(resumed) < count:
        resumed += list(second)
    return resumed


@pytest.mark.parametrize("stop", [3, 4, 9])
def test_resumed_stream_sees_the_same_batches_as_an_uninterrupted_one(tmp_path: Path, stop: int) -> None:
    """Stop after ``stop`` consumed batches (one more prefetched, as Lightning does), save the position,
    resume in a fresh data module: the batches that follow, into the next epoch, are identical
    (keys, RandAugment'ed pixels, captions, ITM negatives, MLM masks). Odd ``stop`` makes the resumed
    loader start with worker 1; 9 crosses into the second epoch (8 batches per epoch)."""
    write_dataset(tmp_path, {"train": shards_of([7, 7, 7, 7]), "val": shards_of([2, 2])})
    options = {"num_workers": 2, "randaugment": True, "seed": 5}

    loader = datamodule(tmp_path, **options).train_dataloader()
    uninterrupted = list(loader) + list(loader)
    assert len(uninterrupted) == 16 and {len(b) for b in uninterrupted} == {4, 2}

    resumed = resumed_batches(
        lambda: datamodule(tmp_path, **options).train_dataloader(), stop, len(uninterrupted)
    )
    assert_same_batches(resumed, uninterrupted)


def test_a_position_saved_with_other_worker_counts_is_refused(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"train": shards_of([4, 4, 4, 4]), "val": shards_of([2])})
    state = datamodule(tmp_path, num_workers=2).train_dataloader().state_dict()
    loader = datamodule(tmp_path, num_workers=1).train_dataloader()
    with pytest.raises(ValueError, match=r"2 loader worker\(s\).*data.num_workers=2"):
        loader.load_state_dict(state)


def rank_epochs(root: Path, world_size: int, epochs: int = 2) -> list[list[list[Batch]]]:
    """``[rank][epoch] -> batches`` for every rank of a ``world_size`` run with 2 workers each."""
    loaders = [
        datamodule(root, rank, world_size, num_workers=2).train_dataloader() for rank in range(world_size)
    ]
    return [[list(loader) for _ in range(epochs)] for loader in loaders]


def test_two_ranks_by_two_workers_see_every_sample_exactly_once(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"train": shards_of([5] * 8), "val": shards_of([2] * 4)})
    expected = Counter(f"t{s}-{i}" for s in range(8) for i in range(5))
    runs = rank_epochs(tmp_path, world_size=2)
    for epoch in range(2):
        keys = [key for rank in runs for batch in rank[epoch] for key in batch.keys]
        assert Counter(keys) == expected
        assert len(runs[0][epoch]) == len(runs[1][epoch])
    assert [b.keys for b in runs[0][0]] != [b.keys for b in runs[0][1]]  # a new order each epoch


def test_unbalanced_ranks_are_cut_to_the_same_number_of_steps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rank with more data would otherwise run extra steps and hang in a collective."""
    write_dataset(tmp_path, {"train": shards_of([12, 1, 1, 1]), "val": shards_of([2] * 4)})
    with caplog.at_level(logging.WARNING, logger="vlp"):
        runs = rank_epochs(tmp_path, world_size=2, epochs=3)
    for epoch in range(3):
        assert len(runs[0][epoch]) == len(runs[1][epoch])
    assert "left out so that every rank runs the same number of steps" in caplog.text


def test_shard_sample_count_reads_headers(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"train": shards_of([3, 5])})
    counts = [shard_sample_count(str(p)) for p in sorted((tmp_path / "train").glob("*.tar"))]
    assert counts == [3, 5]


def test_loader_is_an_iterable_without_length(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"train": shards_of([3, 3])})
    loader = datamodule(tmp_path, num_workers=0).train_dataloader()
    assert isinstance(loader, StreamLoader)
    with pytest.raises(TypeError):
        len(loader)


def epoch_keys(loader: StreamLoader) -> tuple[list[str], int]:
    """The keys one pass yields and its number of batches."""
    batches = list(loader)
    return [key for batch in batches for key in batch.keys], len(batches)


FEW_SHARDS = [
    # (shard sizes, ranks): every layout is read by 2 requested workers per rank
    pytest.param([12], 1, id="1-shard-2-workers"),
    pytest.param([12], 2, id="1-shard-2-ranks-x-2-workers"),
    pytest.param([8, 8, 8], 2, id="3-shards-2-ranks-x-2-workers"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("sizes", "world_size"), FEW_SHARDS)
def test_fewer_shards_than_readers_read_every_sample_once(
    tmp_path: Path, sizes: list[int], world_size: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A valid dataset is never refused for having few shards: fewer workers read it, ranks share the
    shards they cannot split, every sample is read exactly once per epoch, every rank runs as many batches."""
    write_dataset(tmp_path, {"train": shards_of(sizes), "val": shards_of(sizes, prefix="v")})
    expected = {"train": Counter(f"t{s}-{i}" for s, n in enumerate(sizes) for i in range(n))}
    expected["val"] = Counter(f"v{s}-{i}" for s, n in enumerate(sizes) for i in range(n))
    with caplog.at_level(logging.INFO, logger="vlp"):
        modules = [datamodule(tmp_path, rank, world_size, num_workers=2) for rank in range(world_size)]
        train = [dm.train_dataloader() for dm in modules]
        val = [dm.val_dataloader() for dm in modules]
    assert f"shard(s) for {world_size} rank(s) x 2 reader(s)" in caplog.text  # one line says how it is read
    for loaders, split in ((train, "train"), (train, "train"), (val, "val"), (val, "val")):
        passes = [epoch_keys(loader) for loader in loaders]
        assert Counter(key for keys, _ in passes for key in keys) == expected[split]
        assert len({count for _, count in passes}) == 1  # the ranks run the same number of batches


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("sizes", "world_size"), FEW_SHARDS)
@pytest.mark.parametrize("stop", [1, 3])
def test_resume_with_fewer_shards_than_readers(
    tmp_path: Path, sizes: list[int], world_size: int, stop: int
) -> None:
    """The consumed position of each rank restores its batches exactly when shards are shared."""
    write_dataset(tmp_path, {"train": shards_of(sizes), "val": shards_of([2])})
    options = {"num_workers": 2, "randaugment": True, "seed": 1}
    for rank in range(world_size):
        loader = datamodule(tmp_path, rank, world_size, **options).train_dataloader()
        uninterrupted = list(loader) + list(loader)
        first = datamodule(tmp_path, rank, world_size, **options).train_dataloader()
        seen: list[Batch] = []
        iterator = iter(first)
        for batch in iterator:
            first.consumed(batch)
            seen.append(batch)
            if len(seen) == stop:
                next(iterator, None)  # prefetched, never used
                break
        second = datamodule(tmp_path, rank, world_size, **options).train_dataloader()
        second.load_state_dict(json.loads(json.dumps(first.state_dict())))
        resumed = seen + list(second)
        while len(resumed) < len(uninterrupted):
            resumed += list(second)
        assert_same_batches(resumed, uninterrupted)


def test_a_shared_shard_is_counted_as_it_is_read(tmp_path: Path) -> None:
    """The counts the ranks are equalised with match what each rank's readers yield."""
    write_dataset(tmp_path, {"train": shards_of([7, 5, 3])})
    for rank in range(2):
        dm = datamodule(tmp_path, rank, 2, num_workers=2)
        stream = dm.stream("train", train=True)
        workers = stream.workers_for(2)
        for epoch in range(3):
            stream.epoch = epoch
            read = sum(len(list(stream.raw_samples(epoch, w, workers))) for w in range(workers))
            counted = sum(
                item.count(n)
                for w in range(workers)
                for item in stream.worker_items(epoch, w, workers)
                for url, n in zip(stream.urls, stream.sample_counts or [], strict=True)
                if url == item.url
            )
            assert read == counted


def test_evaluation_is_equalised_only_when_the_model_is_sharded(tmp_path: Path) -> None:
    """One val shard of 5 samples over 2 ranks, batches of 2: rank 0 keeps 3 samples (2 batches), rank 1
    keeps 2 (1 batch). Under DDP every sample is evaluated; under FSDP (a collective in every forward)
    both ranks run 1 batch."""
    write_dataset(tmp_path, {"train": shards_of([4]), "val": shards_of([5], prefix="v")})
    for sharded, expected in ((False, [2, 1]), (True, [1, 1])):
        counts = []
        for rank in range(2):
            dm = datamodule(tmp_path, rank, 2, num_workers=0, eval_batch_size=2)
            dm._sharded_model = lambda sharded=sharded: sharded  # type: ignore[method-assign]
            counts.append(len(list(dm.val_dataloader())))
        assert counts == expected
