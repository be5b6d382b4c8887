"""ShardDataModule over several dataset folders: mixed training, each folder's evaluation split, resume."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from shard_helpers import data_module, shards_of, write_dataset, write_shard
from test_stream import assert_same_batches, resumed_batches

from vlp.batch import Batch
from vlp.datamodules.mixed import MixedShardStream, weighted_interleave
from vlp.datamodules.shards import ShardDataModule

SMALL = {"batch_size": 4, "shuffle_buffer": 6}


def datamodule(
    root: Any, rank: int = 0, world_size: int = 1, randaugment: bool = False, **kwargs: Any
) -> ShardDataModule:
    parts = data_module("unused", randaugment=randaugment)
    dm = ShardDataModule(root, parts.transform, parts.decoder, parts.collator, **{**SMALL, **kwargs})
    dm.setup("fit")
    dm._world = lambda: (rank, world_size)  # type: ignore[method-assign]  # what a trainer would report
    return dm


def write_root(root: Path, prefix: str, train: list[int], val: list[int] | None, vocab: Any = None) -> Path:
    """A dataset folder whose keys start with ``prefix`` (so a key names its folder)."""
    splits = {"train": shards_of(train, prefix)}
    if val is not None:
        splits["val"] = shards_of(val, prefix + "v")
    write_dataset(root, splits)
    if vocab is None:
        (root / "vocab.json").unlink()
    else:
        (root / "vocab.json").write_text(json.dumps(vocab))
    return root


@pytest.fixture
def two_roots(tmp_path: Path) -> list[str]:
    a = write_root(tmp_path / "a", "a", [5, 5, 5], [3, 2])
    b = write_root(tmp_path / "b", "b", [4, 4], [2], vocab={"answers": ["yes", "no"]})
    return [str(a), str(b)]


def keys_of(batches: list[Batch]) -> list[str]:
    return [key for batch in batches for key in batch.keys]


def test_training_mixes_every_sample_of_every_folder_once_per_epoch(two_roots: list[str]) -> None:
    dm = datamodule(two_roots, num_workers=2)
    stream = dm.stream("train", train=True)
    assert isinstance(stream, MixedShardStream) and stream.source_sizes == [3, 2]
    assert stream.weights == [15.0, 8.0]  # samples per folder, counted from the shards
    expected = Counter(
        [f"a{s}-{i}" for s in range(3) for i in range(5)] + [f"b{s}-{i}" for s in range(2) for i in range(4)]
    )
    loader = dm.train_dataloader()
    first, second = keys_of(list(loader)), keys_of(list(loader))
    assert Counter(first) == expected and Counter(second) == expected
    assert first != second
    assert {key[0] for key in first[:8]} == {"a", "b"}  # interleaved, not one folder after the other
    assert dm.vocab == {"answers": ["yes", "no"]} and dm.vocab_path == Path(two_roots[1]) / "vocab.json"


def test_evaluation_reads_each_folder_in_turn(two_roots: list[str]) -> None:
    dm = datamodule(two_roots, num_workers=0)
    expected = [f"av{s}-{i}" for s, n in enumerate([3, 2]) for i in range(n)] + ["bv0-0", "bv0-1"]
    assert keys_of(list(dm.val_dataloader())) == expected
    assert type(dm.stream("val", train=False)).__name__ == "ShardStream"


def test_a_folder_without_the_evaluation_split_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = write_root(tmp_path / "a", "a", [3], [2])
    b = write_root(tmp_path / "b", "b", [3], None)
    dm = datamodule([str(a), str(b)], num_workers=0)
    with caplog.at_level(logging.INFO, logger="vlp"):
        assert keys_of(list(dm.val_dataloader())) == ["av0-0", "av0-1"]
    assert f"{b} have none" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"no shards \(\*\.tar\) in .*test; none of the folders"):
        dm.test_dataloader()


def test_every_folder_must_have_the_training_split(tmp_path: Path) -> None:
    a = write_root(tmp_path / "a", "a", [3], [2])
    (tmp_path / "b" / "val").mkdir(parents=True)
    write_shard(tmp_path / "b" / "val" / "shard-000000.tar", shards_of([2], "bv")[0])
    dm = datamodule([str(a), str(tmp_path / "b")], num_workers=0)
    with pytest.raises(
        FileNotFoundError, match=rf"{tmp_path / 'b' / 'train'}; every folder of data.init_args.root"
    ):
        dm.train_dataloader()


@pytest.mark.parametrize("stop", [3, 7])
def test_a_resumed_mixed_stream_sees_the_same_batches(two_roots: list[str], stop: int) -> None:
    """As the single-folder resume test: stop after ``stop`` consumed batches (one more prefetched),
    resume in a fresh data module, into the next epoch (6 batches per epoch here)."""
    options = {"num_workers": 2, "randaugment": True, "seed": 5}
    loader = datamodule(two_roots, **options).train_dataloader()
    uninterrupted = list(loader) + list(loader)

    resumed = resumed_batches(
        lambda: datamodule(two_roots, **options).train_dataloader(), stop, len(uninterrupted)
    )
    assert_same_batches(resumed, uninterrupted)


def test_two_ranks_read_every_sample_once_in_the_same_number_of_steps(tmp_path: Path) -> None:
    a = write_root(tmp_path / "a", "a", [5, 5, 5, 5, 5], [2])
    b = write_root(tmp_path / "b", "b", [4, 4, 3], [2])
    roots = [str(a), str(b)]
    expected = Counter(
        [f"a{s}-{i}" for s in range(5) for i in range(5)]
        + [f"b{s}-{i}" for s, n in enumerate([4, 4, 3]) for i in range(n)]
    )
    loaders = [datamodule(roots, rank, 2, num_workers=2).train_dataloader() for rank in range(2)]
    for _ in range(2):
        runs = [list(loader) for loader in loaders]
        assert len(runs[0]) == len(runs[1])
        assert Counter(keys_of(runs[0]) + keys_of(runs[1])) == expected  # 18 samples per rank here


def test_resampled_weights_are_the_mixing_proportions(tmp_path: Path) -> None:
    a = write_root(tmp_path / "a", "a", [4, 4], [2])
    b = write_root(tmp_path / "b", "b", [4, 4], [2])
    dm = datamodule(
        {str(a): 3, str(b): 1}, num_workers=0, resampled=True, epoch_samples=400, shuffle_buffer=0
    )
    keys = keys_of(list(dm.train_dataloader()))
    assert len(keys) == 400
    share = sum(key.startswith("a") for key in keys) / len(keys)
    assert 0.68 < share < 0.82  # 3:1 -> 0.75; fixed seed, so this is one exact draw of 400


def test_default_weights_are_the_manifest_counts(two_roots: list[str]) -> None:
    manifest = {"splits": {"train": {"samples": 1000, "shards": 3}}}
    (Path(two_roots[0]) / "manifest.json").write_text(json.dumps(manifest))
    assert datamodule(two_roots, num_workers=0).stream("train", train=True).weights == [1000.0, 8.0]


def test_equal_vocabularies_are_accepted_and_different_ones_named(tmp_path: Path) -> None:
    a = write_root(tmp_path / "a", "a", [3], [2], vocab={"answers": ["yes"]})
    b = write_root(tmp_path / "b", "b", [3], [2], vocab={"answers": ["yes"]})
    assert datamodule([str(a), str(b)], num_workers=0).vocab == {"answers": ["yes"]}
    (b / "vocab.json").write_text(json.dumps({"answers": ["no"]}))
    with pytest.raises(ValueError, match=rf"{a / 'vocab.json'} and {b / 'vocab.json'} differ"):
        datamodule([str(a), str(b)], num_workers=0)


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ([], "lists no dataset folder"),
        ({"a": 0}, "the weight of a must be a positive number"),
        ({"a": float("nan")}, "must be a positive number"),
        (["a", "./a"], "lists a and a, the same folder"),
        (7, "must be a folder, a list of folders or a mapping"),
    ],
)
def test_bad_roots_are_refused_by_name(root: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        datamodule(root)


def test_synth_needs_one_folder(tmp_path: Path) -> None:
    from vlp.datamodules.synth.scenes import ShapesConfig

    dm = data_module(tmp_path / "a")
    with pytest.raises(ValueError, match="synth generates one dataset folder"):
        ShardDataModule(
            [str(tmp_path / "a"), str(tmp_path / "b")],
            dm.transform,
            dm.decoder,
            dm.collator,
            synth=ShapesConfig(),
        )


def test_weighted_interleave_yields_everything_in_a_seeded_order() -> None:
    def mix(seed: int) -> list[str]:
        sources = [iter(["a1", "a2", "a3"]), iter(["b1"]), iter(["c1", "c2"])]
        return list(weighted_interleave(sources, [1.0, 1.0, 5.0], random.Random(seed)))

    assert sorted(mix(0)) == ["a1", "a2", "a3", "b1", "c1", "c2"] and mix(0) == mix(0)
    assert [x for x in mix(0) if x[0] == "a"] == ["a1", "a2", "a3"]  # each source keeps its order
    assert len({tuple(mix(seed)) for seed in range(8)}) > 1
