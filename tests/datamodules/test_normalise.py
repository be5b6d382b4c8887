"""Batches leave the loaders with uint8 pixels and reach the model normalised, bit for bit the float batches
the collators made when they normalised in the workers: padding 0.0, the blank control 0.0, pairs on both
sides, through Lightning's hook in fit, validate, test and predict."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from shard_helpers import data_module, png_bytes, write_dataset
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from vlp.batch import Batch
from vlp.datamodules import normalise_batch
from vlp.datamodules.collate import PretrainCollator, random_derangement
from vlp.datamodules.decode import DecodedSample
from vlp.datamodules.normalise import normalise_pixels
from vlp.datamodules.pairs import DecodedPair, PairCollator
from vlp.datamodules.parts import Vocab
from vlp.datamodules.retrieval import RetrievalCollator
from vlp.datamodules.transforms import VILT_MEAN, VILT_STD
from vlp.datamodules.vqa import VQACollator

SHAPES = [(32, 48), (48, 32), (16, 16), (48, 48), (40, 8)]


def bits(tensor: Tensor) -> Tensor:
    """The float32 tensor's bit patterns, so that 0.0 and -0.0 differ."""
    assert tensor.dtype == torch.float32
    return tensor.view(torch.int32)


def uint8_images(seed: int, shapes: list[tuple[int, int]] = SHAPES) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=generator) for shape in shapes]


def float_path(images: list[Tensor], blank: bool = False) -> Tensor:
    """The float32 batch the collators made before batches were uint8: zeros, each image normalised into
    its top-left slot with ``torch.mul(image, 2/255, out=slot); slot.sub_(1)``; ``zero_()`` when blank."""
    height, width = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    pixels = torch.zeros(len(images), 3, height, width)
    for k, image in enumerate(images):
        slot = pixels[k, :, : image.shape[1], : image.shape[2]]
        torch.mul(image, 2.0 / 255, out=slot)
        slot.sub_(1.0)
    return pixels.zero_() if blank else pixels


def hooked(batch: Batch, root: Path) -> Batch:
    """What the data module's ``on_after_batch_transfer`` hands the model (on the CPU)."""
    return data_module(root).on_after_batch_transfer(batch, 0)


def assert_only_images_changed(before: Batch, after: Batch) -> None:
    for f in fields(Batch):
        if f.name not in ("pixels", "pixels_right"):
            assert getattr(after, f.name) is getattr(before, f.name), f.name


def test_every_uint8_value_is_torchvisions_normalisation_and_padding_is_positive_zero() -> None:
    values = torch.arange(256, dtype=torch.uint8).repeat(3, 2, 1)  # every value in every channel
    pixels = torch.full((2, 3, 4, 300), 77, dtype=torch.uint8)  # padding holding a value is still padding
    pixels[1, :, 1:3, 7:263] = values
    mask = torch.zeros(2, 4, 300, dtype=torch.bool)
    mask[1, 1:3, 7:263] = True
    out = normalise_pixels(pixels, mask)
    expected = F.normalize(F.to_dtype(values, torch.float32, scale=True), list(VILT_MEAN), list(VILT_STD))
    assert torch.equal(bits(out[1, :, 1:3, 7:263]), bits(expected))
    padding = out.clone()
    padding[1, :, 1:3, 7:263] = 0.0
    assert torch.equal(bits(padding), torch.zeros_like(bits(padding)))


def test_pretraining_batches_reach_the_model_as_the_float_path_made_them(tmp_path: Path) -> None:
    # shuffled images (the blind control, training): the derangement is the generator's first draw
    images = uint8_images(0)
    samples = [DecodedSample(f"s{i}", image, [f"caption {i}"]) for i, image in enumerate(images)]
    collator = PretrainCollator(shuffle_images=True).for_split(train=True)
    batch = collator(samples, torch.Generator().manual_seed(3))
    order = random_derangement(len(images), torch.Generator().manual_seed(3))
    assert batch.pixels.dtype == torch.uint8 and order != list(range(len(images)))
    model_batch = hooked(batch, tmp_path)
    assert torch.equal(bits(model_batch.pixels), bits(float_path([images[j] for j in order])))
    assert_only_images_changed(batch, model_batch)


def test_pair_batches_reach_the_model_as_the_float_path_made_them_on_both_sides(tmp_path: Path) -> None:
    lefts, rights = uint8_images(1), uint8_images(2, SHAPES[::-1])
    samples = [DecodedPair(f"p{i}", lefts[i], rights[i], f"statement {i}", i % 2) for i in range(len(lefts))]
    batch = PairCollator().for_split(train=True)(samples)
    assert batch.pixels.dtype == batch.pixels_right.dtype == torch.uint8
    model_batch = hooked(batch, tmp_path)
    assert torch.equal(bits(model_batch.pixels), bits(float_path(lefts)))
    assert torch.equal(bits(model_batch.pixels_right), bits(float_path(rights)))
    assert_only_images_changed(batch, model_batch)


@pytest.mark.parametrize("kind", ["pairs", "vqa", "retrieval"])
def test_the_blank_control_reaches_the_model_as_the_float_path_made_it(kind: str, tmp_path: Path) -> None:
    images = uint8_images(4)
    qa = [{"question": "what colour is it?", "answers": ["red"]}]
    if kind == "pairs":
        samples: list[Any] = [DecodedPair(f"p{i}", im, im, "s", 1) for i, im in enumerate(images)]
        collator: Any = PairCollator(blank_images=True)
    elif kind == "vqa":
        samples = [DecodedSample(f"s{i}", im, [], {"qa": qa}) for i, im in enumerate(images)]
        collator = VQACollator(blank_images=True)
    else:
        samples = [DecodedSample(f"s{i}", im, ["a", "b"]) for i, im in enumerate(images)]
        collator = RetrievalCollator(blank_images=True)
    batch = collator.for_split(train=False, vocab=Vocab(lists={"answers": ["red"]}))(samples)
    model_batch = hooked(batch, tmp_path)
    expected = bits(float_path(images, blank=True))
    assert torch.equal(bits(model_batch.pixels), expected)
    assert torch.equal(model_batch.pixel_mask, batch.pixel_mask) and not batch.pixel_mask.all()
    if kind == "pairs":
        assert torch.equal(bits(model_batch.pixels_right), expected)


def test_float_batches_and_other_values_pass_through_unchanged() -> None:
    pixels = torch.randn(2, 3, 8, 8)
    batch = Batch(keys=["a", "b"], pixels=pixels, pixel_mask=torch.ones(2, 8, 8, dtype=torch.bool))
    assert normalise_batch(batch) is batch
    assert normalise_batch(Batch(keys=[])) == Batch(keys=[])  # an all-skipped batch has no images
    assert normalise_batch({"pixels": 1}) == {"pixels": 1}


def test_uint8_pixels_without_their_mask_are_refused() -> None:
    batch = Batch(keys=["a"], pixels=torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"batch\.pixels is uint8 but batch\.pixel_mask is None"):
        normalise_batch(batch)
    with pytest.raises(ValueError, match=r"pixel_mask \[1, 4, 5\] does not match pixels \[1, 3, 4, 4\]"):
        normalise_pixels(batch.pixels, torch.ones(1, 4, 5, dtype=torch.bool))


class Recorder(L.LightningModule):
    """Records the pixels of every batch each loop hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[str, list[tuple[list[str], Tensor]]] = {}

    def record(self, stage: str, batch: Batch) -> Tensor:
        self.seen.setdefault(stage, []).append((batch.keys, batch.pixels))
        return self.weight * batch.pixels.mean()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self.record("fit", batch)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.record("validate", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.record("test", batch)

    def predict_step(self, batch: Batch, batch_idx: int) -> None:
        self.record("predict", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def sized_sample(key: str, index: int) -> dict[str, Any]:
    """A PNG of its own colour, landscape or portrait, so batches have padding."""
    size = (48, 32) if index % 2 else (32, 64)
    colour = (37 * index % 256, 91 * index % 256, 53 * index % 256)
    record = {"captions": [f"caption of {key}"]}
    return {"__key__": key, "png": png_bytes(colour, size), "json": json.dumps(record).encode()}


def test_every_lightning_loop_hands_the_model_normalised_pixels(tmp_path: Path) -> None:
    shards = {
        split: [[sized_sample(f"{split}{i}", i) for i in range(4)]] for split in ("train", "val", "test")
    }
    write_dataset(tmp_path, shards)
    options = {"batch_size": 4, "num_workers": 0, "shuffle_buffer": 0, "seed": 1}
    model, data = Recorder(), data_module(tmp_path, collator=PretrainCollator(itm=False), **options)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, data)
    trainer.validate(model, data, verbose=False)
    trainer.test(model, data, verbose=False)
    trainer.predict(model, data)
    reference = data_module(tmp_path, collator=PretrainCollator(itm=False), **options)
    reference.setup("fit")
    loaders = {
        "fit": reference.train_dataloader,
        "validate": reference.val_dataloader,
        "test": reference.test_dataloader,
        "predict": reference.predict_dataloader,
    }
    for stage, loader in loaders.items():
        expected = [normalise_batch(batch) for batch in loader()]
        seen = model.seen[stage][
            -len(expected) :
        ]  # fit's validation records too: the last pass is validate's
        assert [keys for keys, _ in seen] == [batch.keys for batch in expected], stage
        for (_, pixels), batch in zip(seen, expected, strict=True):
            assert pixels.dtype == torch.float32, stage
            assert torch.equal(bits(pixels), bits(batch.pixels)), stage
            assert (
                not batch.pixel_mask.all()
                and (pixels[~batch.pixel_mask.unsqueeze(1).expand_as(pixels)] == 0).all()
            )


def test_without_a_mask_every_pixel_is_real() -> None:
    pixels = torch.arange(2 * 3 * 4 * 5, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(2, 3, 4, 5)
    assert torch.equal(
        normalise_pixels(pixels), normalise_pixels(pixels, torch.ones(2, 4, 5, dtype=torch.bool))
    )
    with pytest.raises(ValueError, match=r"pixel_mask None does not match pixels \[3, 4, 5\]"):
        normalise_pixels(pixels[0])
