from __future__ import annotations

from pathlib import Path

import torch
from shard_helpers import data_module

from vlp.datamodules.decode import DecodedSample, SampleDecoder
from vlp.datamodules.retrieval import CaptionCollator, RetrievalCollator


def sample(key: str, captions: list[str]) -> DecodedSample:
    return DecodedSample(key=key, image=torch.zeros(3, 8, 8), captions=captions)


def test_evaluation_batches_carry_every_caption_and_its_image() -> None:
    samples = [sample("a", ["one", "two", "three"]), sample("b", ["four"]), sample("c", ["five", "six"])]
    batch = RetrievalCollator().for_split(train=False)(samples)
    assert len(batch) == 3 and batch.pixels.shape[0] == 3
    assert batch.captions == ["one", "two", "three", "four", "five", "six"]
    assert batch.text_image_index.tolist() == [0, 0, 0, 1, 2, 2]
    assert batch.text_ids.shape[0] == 6
    capped = RetrievalCollator(max_captions=1).for_split(train=False)(samples)
    assert capped.captions == ["one", "four", "five"] and capped.text_image_index.tolist() == [0, 1, 2]


def test_training_batches_pair_each_image_with_one_of_its_captions() -> None:
    samples = [sample("a", ["one", "two"]), sample("b", ["four"])]
    seen = set()
    for seed in range(10):
        batch = CaptionCollator().for_split(train=True)(samples, torch.Generator().manual_seed(seed))
        assert batch.text_image_index is None and batch.captions[1] == "four"
        seen.add(batch.captions[0])
    assert seen == {"one", "two"}


def test_the_collator_trains_on_caption_pairs_with_its_settings() -> None:
    train = RetrievalCollator(max_text_len=7, blank_images=True, max_captions=2).for_split(train=True, seed=3)
    assert isinstance(train, CaptionCollator)
    assert (train.max_text_len, train.blank_images, train.seed) == (7, True, 3)


def test_datamodule_trains_on_pairs_and_evaluates_on_all_captions(tiny_shapes: Path) -> None:
    dm = data_module(tiny_shapes, SampleDecoder(), RetrievalCollator(), batch_size=4, num_workers=0)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train.text_ids.shape[0] == len(train) == 4
    val = list(dm.val_dataloader())
    assert sum(len(b) for b in val) == 8
    assert all(b.text_ids.shape[0] > len(b) for b in val)  # shapes images have 3-5 captions each
