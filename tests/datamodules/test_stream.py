from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from shard_helpers import shards_of, write_dataset

from vlp.datamodules.schema import Batch
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.stream import StreamLoader, shard_sample_count

SMALL = {"image_size": 32, "patch_size": 16, "batch_size": 4, "shuffle_buffer": 6}


def datamodule(root: Path, rank: int = 0, world_size: int = 1, **kwargs: Any) -> ShardDataModule:
    dm = ShardDataModule(str(root), **{**SMALL, **kwargs})
    dm.setup("fit")
    dm._world = lambda: (rank, world_size)  # type: ignore[method-assign]  # what a trainer would report
    return dm


def assert_same_batches(a: list[Batch], b: list[Batch]) -> None:
    assert [x.keys for x in a] == [y.keys for y in b]
    for x, y in zip(a, b, strict=True):
        assert x.position == y.position
        for name in ("pixels", "text_ids", "text_mask", "itm_labels", "mlm_labels"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


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

    first = datamodule(tmp_path, **options).train_dataloader()
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

    second = datamodule(tmp_path, **options).train_dataloader()
    second.load_state_dict(state)
    resumed = seen + list(second)
    while len(resumed) < len(uninterrupted):
        resumed += list(second)
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
