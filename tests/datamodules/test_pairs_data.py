from __future__ import annotations

import json
import tarfile
from pathlib import Path

import torch
from shard_helpers import data_module, png_bytes

from vlp.datamodules.decode import SkippedSample
from vlp.datamodules.pairs import DecodedPair, PairCollator, PairDecoder
from vlp.datamodules.transforms import ViltTransform


def pair(key: str, label: object, **images: bytes) -> dict:
    record = {"statement": "the left image contains a red shape", "label": label}
    return {"__key__": key, "json": json.dumps(record).encode(), **images}


def test_decoder_keeps_left_and_right_apart_and_reads_labels() -> None:
    decode = PairDecoder().bind(ViltTransform(32, 16))
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))
    decoded = decode(pair("k", True, **{"left.png": red, "right.png": blue}))
    assert isinstance(decoded, DecodedPair) and decoded.label == 1
    assert (decoded.left[0] == 255).all() and (decoded.right[2] == 255).all()  # red left, blue right
    assert (decoded.left[2] == 0).all() and (decoded.right[0] == 0).all()
    assert decode(pair("k", "False", **{"left.png": red, "right.png": blue})).label == 0
    missing = decode(pair("k", True, **{"left.png": red}))
    assert isinstance(missing, SkippedSample) and "right" in missing.reason
    unlabelled = decode(pair("k", "maybe", **{"left.png": red, "right.png": blue}))
    assert isinstance(unlabelled, SkippedSample) and "label" in unlabelled.reason


def test_collator_pads_each_side_and_blanks_both_on_request() -> None:
    left, right = torch.ones(3, 16, 32), torch.full((3, 32, 16), 2.0)
    samples = [DecodedPair("a", left, right, "s one", 1), DecodedPair("b", right, left, "s two", 0)]
    batch = PairCollator().for_split(train=True)(samples)
    assert batch.pair_labels.tolist() == [1, 0] and batch.keys == ["a", "b"]
    assert batch.pixels.shape == batch.pixels_right.shape == (2, 3, 32, 32)
    assert batch.pixel_mask[0, :16].all() and not batch.pixel_mask[0, 16:].any()
    assert batch.pixels_right[0].max() == 2.0 and batch.pixels[0].max() == 1.0
    blank = PairCollator(blank_images=True).for_split(train=False)(samples)
    assert blank.pixels.abs().sum() == 0 and blank.pixels_right.abs().sum() == 0


def test_datamodule_reads_the_shapes_pair_splits(tiny_shapes: Path) -> None:
    splits = {"train_split": "pairs_train", "val_split": "pairs_val", "test_split": "pairs_test"}
    dm = data_module(tiny_shapes, PairDecoder(), PairCollator(), batch_size=4, num_workers=0, **splits)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == [f"pairs_val-{i:06d}" for i in range(4)]
    stored = {}
    for shard in sorted((tiny_shapes / "pairs_val").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    record = json.loads(tar.extractfile(member).read())
                    stored[member.name.split(".")[0]] = (record["statement"], int(record["label"]))
    read = {k: (s, int(y)) for b in batches for k, s, y in zip(b.keys, b.captions, b.pair_labels)}
    assert read == stored
    assert all(b.pixels_right is not None and b.answers is None for b in batches)
