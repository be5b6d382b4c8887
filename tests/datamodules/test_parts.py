"""The parts contract: a data module takes a transform, a decoder and a collator that fit together; parts
get what they need from the run through bind / for_split, and name the file and key when it is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from shard_helpers import data_module, good_sample, keyed_shards, write_dataset

from vlp.datamodules.collate import PretrainCollator
from vlp.datamodules.decode import DecodedSample, SampleDecoder
from vlp.datamodules.e2e import E2ECollator, ObjectDecoder
from vlp.datamodules.pairs import PairCollator, PairDecoder
from vlp.datamodules.parts import Collator, Decoder, Vocab
from vlp.datamodules.retrieval import RetrievalCollator
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.transforms import ViltTransform
from vlp.datamodules.vqa import VQACollator, VQADecoder


@pytest.mark.parametrize(
    ("decoder", "collator", "needed"),
    [
        (SampleDecoder(), VQACollator(), "VQADecoder"),
        (PairDecoder(), PretrainCollator(), "SampleDecoder"),
        (SampleDecoder(), E2ECollator(targets=True), "ObjectDecoder"),
        (VQADecoder(), PairCollator(), "PairDecoder"),
    ],
    ids=["vqa-collator", "pretrain-collator", "e2e-targets", "pair-collator"],
)
def test_a_collator_that_does_not_take_the_decoders_samples_is_refused_naming_both_keys(
    decoder: Decoder, collator: Collator, needed: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError) as refused:
        data_module(tmp_path, decoder, collator)
    message = str(refused.value)
    assert f"data.init_args.collator {type(collator).__name__} takes the samples of a {needed}" in message
    assert f"data.init_args.decoder is a {type(decoder).__name__}" in message
    assert "set data.init_args.decoder to vlp.datamodules." in message and message.endswith(needed)


@pytest.mark.parametrize(
    ("decoder", "collator"),
    [
        (SampleDecoder(), PretrainCollator()),
        (ObjectDecoder(), PretrainCollator()),  # an ObjectDecoder's samples are SampleDecoder samples too
        (ObjectDecoder(), E2ECollator()),
        (SampleDecoder(), E2ECollator(targets=False)),
        (VQADecoder(), VQACollator()),
        (PairDecoder(), PairCollator()),
        (SampleDecoder(), RetrievalCollator()),
    ],
)
def test_parts_that_fit_are_taken(decoder: Decoder, collator: Collator, tmp_path: Path) -> None:
    dm = data_module(tmp_path, decoder, collator)
    assert dm.decoder is decoder and dm.collator is collator


def test_a_part_of_the_wrong_kind_is_refused_naming_its_key(tmp_path: Path) -> None:
    with pytest.raises(
        TypeError, match=r"data\.init_args\.decoder must be a vlp\.datamodules\.parts\.Decoder"
    ):
        ShardDataModule(str(tmp_path), ViltTransform(32, 16), lambda s: s, PretrainCollator())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"data\.init_args\.collator must be .*Collator, got SampleDecoder"):
        ShardDataModule(str(tmp_path), ViltTransform(32, 16), SampleDecoder(), SampleDecoder())  # type: ignore[arg-type]


def test_an_unbound_decoder_refuses_to_run() -> None:
    with pytest.raises(RuntimeError, match=r"SampleDecoder is a data part: call its bind"):
        SampleDecoder()(good_sample("k"))
    decoded = SampleDecoder().bind(ViltTransform(32, 16), Vocab(), max_image_pixels=None)(good_sample("k"))
    assert isinstance(decoded, DecodedSample)


def test_binding_leaves_the_part_as_it_was() -> None:
    part = PretrainCollator(shuffle_images=True)
    train, evaluation = part.for_split(train=True, seed=3), part.for_split(train=False, seed=3)
    assert (train.shuffle, train.seed) == (True, 3) and not evaluation.shuffle
    assert (part.shuffle, part.seed) == (False, 0)  # the part itself is untouched, and still unbound
    with pytest.raises(RuntimeError, match="for_split"):
        part([])
    blind = E2ECollator(shuffle_images=True, shuffle_eval_images=True)
    assert blind.for_split(train=False).shuffle  # the captioning control shuffles evaluation too


def test_vocab_dependent_parts_name_the_file_and_the_list(tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    where = re.escape(str(path))
    with pytest.raises(ValueError, match=rf"{where} has no 'categories' list: detection classifies over it"):
        ObjectDecoder().bind(ViltTransform(32, 16), Vocab(path, {"attributes": ["red"]}))
    with pytest.raises(ValueError, match=rf"{where} has no 'answers' list: VQA classifies over it"):
        VQACollator().for_split(train=True, vocab=Vocab(path, {}))
    with pytest.raises(ValueError, match=rf"{where}: 'answers' must be a list of strings"):
        VQACollator().for_split(train=True, vocab=Vocab(path, {"answers": "yes"}))
    with pytest.raises(ValueError, match=rf"{where}: 'answers' holds duplicates"):
        VQACollator().for_split(train=True, vocab=Vocab(path, {"answers": ["Yes", "yes "]}))
    bound = ObjectDecoder().bind(ViltTransform(32, 16), Vocab(path, {"categories": ["square", "circle"]}))
    assert bound.categories == {"square": 0, "circle": 1} and bound.attributes == {}


def test_the_data_module_hands_its_vocab_json_to_the_parts(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"val": keyed_shards("v", 1, 2)})  # vocab.json: categories only
    dm = data_module(tmp_path, ObjectDecoder(), E2ECollator(), num_workers=0, batch_size=2)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert [t.labels.tolist() for t in batch.targets] == [[], []]
    dm = data_module(tmp_path, VQADecoder(), VQACollator(), num_workers=0)
    dm.setup("validate")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'vocab.json'} has no 'answers' list")):
        dm.val_dataloader()


def test_predict_reads_the_test_split_unless_told(tmp_path: Path) -> None:
    assert data_module(tmp_path, test_split="held_out").predict_split == "held_out"
    assert data_module(tmp_path, predict_split="prompts").predict_split == "prompts"


def test_the_transform_augments_training_only() -> None:
    transform = ViltTransform(32, 16, randaugment=True)
    assert transform.for_split(train=True).randaugment is not None
    assert transform.for_split(train=False).randaugment is None
