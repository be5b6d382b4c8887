"""Grounded-word masking picks whole vocabulary words, at the requested rate, and nothing else."""

from __future__ import annotations

import pytest
import torch

from vlp.datamodules.grounded_masking import grounded_word_mask
from vlp.tokenizers import load_tokenizer

WORDS = ("red", "cyan", "hexagon", "circle")


def encode(captions: list[str]):
    return load_tokenizer()(captions, padding="longest", return_offsets_mapping=True, return_tensors="pt")


def picked_words(captions: list[str], probability: float, seed: int = 0) -> list[list[str]]:
    encoding = encode(captions)
    picked = grounded_word_mask(captions, encoding, WORDS, probability, torch.Generator().manual_seed(seed))
    tokenizer = load_tokenizer()
    return [
        tokenizer.convert_ids_to_tokens(encoding["input_ids"][row][picked[row]])
        for row in range(len(captions))
    ]


def test_probability_one_masks_every_piece_of_every_vocabulary_word_and_nothing_else() -> None:
    captions = ["a red hexagon left of a cyan Circle", "there is a green square"]
    assert picked_words(captions, 1.0) == [["red", "he", "##xa", "##gon", "cy", "##an", "circle"], []]


def test_probability_zero_masks_nothing() -> None:
    assert picked_words(["a red hexagon"], 0.0) == [[]]


def test_words_inside_longer_words_are_not_vocabulary_words() -> None:
    assert picked_words(["a reddish circles"], 1.0) == [[]]


def test_each_occurrence_is_drawn_once_at_the_given_rate() -> None:
    captions = ["red " * 30] * 8
    encoding = encode(captions)
    picked = grounded_word_mask(captions, encoding, WORDS, 0.3, torch.Generator().manual_seed(0))
    rate = picked.sum().item() / (30 * 8)
    assert 0.22 < rate < 0.38
    # a multi-piece word is masked all or nothing
    captions = ["hexagon " * 30] * 4
    encoding = encode(captions)
    picked = grounded_word_mask(captions, encoding, WORDS, 0.5, torch.Generator().manual_seed(1))
    pieces = picked[:, 1:-1].reshape(4, 30, 3)
    assert torch.equal(pieces.all(-1), pieces.any(-1))
    assert 0 < pieces.all(-1).sum() < 120


def test_bad_probability_is_refused() -> None:
    with pytest.raises(ValueError, match="probability"):
        grounded_word_mask(["red"], encode(["red"]), WORDS, 1.5, torch.Generator())


def test_collator_masks_grounded_words_on_top_of_mlm_and_labels_them() -> None:
    from vlp.datamodules.collate import PretrainCollator
    from vlp.datamodules.decode import DecodedSample

    captions = ["a small red hexagon left of a cyan circle"] * 4
    samples = [
        DecodedSample(f"k{i}", torch.zeros(3, 16, 16), [c], {}, (16, 16)) for i, c in enumerate(captions)
    ]
    collate = PretrainCollator(
        mlm_probability=0.0, grounded_words=WORDS, grounded_mask_probability=1.0, whole_word_masking=True
    ).for_split(train=True)
    batch = collate(samples, torch.Generator().manual_seed(0))
    tokenizer = load_tokenizer()
    masked = batch.mlm_text_ids == tokenizer.mask_token_id
    assert torch.equal(masked, batch.mlm_labels != -100)
    assert tokenizer.convert_ids_to_tokens(batch.mlm_labels[0][masked[0]]) == [
        "red", "he", "##xa", "##gon", "cy", "##an", "circle",
    ]  # fmt: skip
    assert torch.equal(batch.mlm_labels[masked], batch.text_ids[masked])

    plain = PretrainCollator(mlm_probability=0.15, whole_word_masking=True).for_split(train=True)(
        samples, torch.Generator().manual_seed(0)
    )
    both = PretrainCollator(
        mlm_probability=0.15, whole_word_masking=True, grounded_words=WORDS, grounded_mask_probability=1.0
    ).for_split(train=True)(samples, torch.Generator().manual_seed(0))
    # the ordinary MLM targets are kept; grounded ones are added
    assert ((plain.mlm_labels != -100) <= (both.mlm_labels != -100)).all()
    with pytest.raises(ValueError, match="grounded_words"):
        PretrainCollator(grounded_mask_probability=0.5, grounded_words=[])


def test_the_grounded_words_are_vocab_json_s_unless_listed(tmp_path) -> None:
    from vlp.datamodules.collate import PretrainCollator
    from vlp.datamodules.parts import Vocab

    vocab = Vocab(tmp_path / "vocab.json", {"categories": ["circle"], "attributes": ["red", "small"]})
    collator = PretrainCollator(grounded_mask_probability=0.3)
    assert collator.for_split(train=True, vocab=vocab).words == ("circle", "red", "small")
    with pytest.raises(
        ValueError, match=r"grounded_mask_probability=0.3 but .*vocab\.json has no 'categories'"
    ):
        collator.for_split(train=True, vocab=Vocab(tmp_path / "vocab.json", {}))
    listed = PretrainCollator(grounded_mask_probability=0.3, grounded_words=["red"])
    assert listed.for_split(train=False, vocab=vocab).words == ("red",)
