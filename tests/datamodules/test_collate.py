from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from vlp.batch import Batch
from vlp.datamodules.collate import PretrainCollator, pad_images, random_derangement
from vlp.datamodules.decode import DecodedSample, SkippedSample
from vlp.datamodules.synth.truth import ShapesCaptionCheck
from vlp.tokenizers import load_tokenizer

CAPTIONS = [
    "a small red circle above a big blue square",
    "two green triangles on the left",
    "a yellow hexagon next to a purple star",
    "three shapes in a row",
]


def make_samples(n: int, size: tuple[int, int] = (16, 16)) -> list[DecodedSample]:
    """Samples whose images are constant ``i`` (so every image is identifiable) with two captions each."""
    return [
        DecodedSample(
            key=f"s{i:03d}",
            image=torch.full((3, *size), float(i)),
            captions=[CAPTIONS[i % len(CAPTIONS)], CAPTIONS[(i + 1) % len(CAPTIONS)]],
        )
        for i in range(n)
    ]


def original_ids(batch: Batch, max_text_len: int = 40) -> torch.Tensor:
    encoding = load_tokenizer()(
        batch.captions, padding="longest", truncation=True, max_length=max_text_len, return_tensors="pt"
    )
    return encoding["input_ids"]


def image_index(pixels: torch.Tensor) -> int:
    """Which sample's (constant) image this is."""
    return int(pixels[0, 0, 0])


def assert_batches_equal(a: Batch, b: Batch) -> None:
    assert a.keys == b.keys and a.captions == b.captions
    for name in (
        "pixels",
        "pixel_mask",
        "text_ids",
        "text_mask",
        "mlm_text_ids",
        "mlm_labels",
        "itm_labels",
        "itm_image_index",
    ):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_pads_to_batch_max_and_masks_real_pixels() -> None:
    images = [torch.full((3, 16, 16), 1.0), torch.full((3, 8, 32), 2.0), torch.full((3, 32, 8), 3.0)]
    pixels, pixel_mask = pad_images(images)
    assert pixels.shape == (3, 3, 32, 32) and pixel_mask.shape == (3, 32, 32)
    assert pixel_mask.dtype == torch.bool
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        assert pixel_mask[i, :h, :w].all() and pixel_mask[i].sum() == h * w
        assert torch.equal(pixels[i, :, :h, :w], image)
        assert (pixels[i][:, ~pixel_mask[i]] == 0).all()


def reference_pad(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images zero-padded into a uint8 batch, top-left, with their mask, written plainly."""
    height, width = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    pixels = torch.zeros(len(images), 3, height, width, dtype=torch.uint8)
    mask = torch.zeros(len(images), height, width, dtype=torch.bool)
    for k, image in enumerate(images):
        pixels[k, :, : image.shape[1], : image.shape[2]] = image
        mask[k, : image.shape[1], : image.shape[2]] = True
    return pixels, mask


def uint8_images(seed: int) -> list[torch.Tensor]:
    """Random uint8 images of mixed shapes: landscape, portrait, square, one of the batch's full size."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(32, 48), (48, 32), (16, 16), (48, 48), (40, 8)]
    return [torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=generator) for shape in shapes]


def test_uint8_images_stay_uint8_in_the_padded_batch() -> None:
    images = uint8_images(0)
    pixels, pixel_mask = pad_images(images)
    expected_pixels, expected_mask = reference_pad(images)
    assert pixels.dtype == torch.uint8 and pixels.shape == (5, 3, 48, 48)
    assert torch.equal(pixels, expected_pixels) and torch.equal(pixel_mask, expected_mask)


def test_images_of_one_batch_must_share_a_dtype() -> None:
    with pytest.raises(ValueError, match=r"share a dtype, got \['torch.float32', 'torch.uint8'\]"):
        pad_images([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, 4, 4)])


class _PaddedInWorker(IterableDataset):
    """Batches padded in a loader worker, with whether the worker made them in shared memory."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        for seed in range(3):
            pixels, pixel_mask = pad_images(uint8_images(seed))
            yield pixels, pixel_mask, pixels.is_shared() and pixel_mask.is_shared()


def test_a_worker_pads_into_shared_memory_with_zero_padding() -> None:
    # made in new shared memory (nothing to copy on the way out) whose padding is never written: zeros
    loader = DataLoader(_PaddedInWorker(), batch_size=None, num_workers=1)
    for seed, (pixels, pixel_mask, made_shared) in enumerate(loader):
        expected_pixels, expected_mask = reference_pad(uint8_images(seed))
        assert made_shared
        assert torch.equal(pixels, expected_pixels) and torch.equal(pixel_mask, expected_mask)
    assert not pad_images(uint8_images(0))[0].is_shared()  # the main process makes private tensors


def test_collated_batch_is_padded_and_typed() -> None:
    samples = [
        DecodedSample("a", torch.ones(3, 16, 32), ["a red circle"]),
        DecodedSample("b", torch.ones(3, 32, 16), ["a blue square on the right"]),
    ]
    batch = PretrainCollator(itm=False).for_split(train=True)(samples)
    assert batch.keys == ["a", "b"]
    assert batch.pixels.shape == (2, 3, 32, 32)
    assert batch.pixel_mask[0].sum() == 16 * 32 and batch.pixel_mask[0, :16, :32].all()
    assert batch.pixel_mask[1].sum() == 32 * 16 and batch.pixel_mask[1, :32, :16].all()
    assert batch.text_ids.dtype == torch.long and batch.text_mask.dtype == torch.bool
    assert batch.text_ids.shape == batch.text_mask.shape == batch.mlm_labels.shape
    assert batch.text_mask[0].sum() == 5  # [CLS] a red circle [SEP]
    assert batch.itm_labels is None and batch.num_skipped == 0


def test_skip_markers_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    samples = [
        *make_samples(3),
        SkippedSample("bad-1", "image decode failed"),
        SkippedSample("bad-2", "no captions"),
    ]
    with caplog.at_level(logging.WARNING):
        batch = PretrainCollator().for_split(train=True)(samples)
    assert batch.keys == ["s000", "s001", "s002"] and len(batch) == 3
    assert batch.num_skipped == 2 and batch.skipped_keys == ["bad-1", "bad-2"]
    assert "bad-1" in caplog.text and "image decode failed" in caplog.text


def test_all_skipped_batch_is_empty_but_counted() -> None:
    batch = PretrainCollator().for_split(train=True)([SkippedSample("x", "missing json")])
    assert len(batch) == 0 and batch.pixels is None and batch.num_skipped == 1


def test_captions_are_chosen_among_each_samples_own() -> None:
    samples = make_samples(8)
    batch = PretrainCollator(itm=False).for_split(train=True)(samples)
    assert all(c in s.captions for c, s in zip(batch.captions, samples))


def longest(captions: list[str]) -> str:
    return max(captions, key=lambda caption: len(caption.split()))


def test_longest_caption_probability_one_always_reads_the_longest_in_training() -> None:
    samples = make_samples(32)
    batch = PretrainCollator(itm=False, longest_caption_probability=1.0).for_split(train=True, seed=3)(
        samples
    )
    assert batch.captions == [longest(s.captions) for s in samples]


def test_longest_caption_probability_sets_the_share_of_longest_picks() -> None:
    samples = make_samples(
        400
    )  # captions differ in length in every sample: uniform picks the longest half the time
    collator = PretrainCollator(itm=False, mlm_probability=0.0, longest_caption_probability=0.5)
    batch = collator.for_split(train=True, seed=2)(samples)
    share = sum(c == longest(s.captions) for c, s in zip(batch.captions, samples)) / len(samples)
    assert 0.68 < share < 0.82  # expected 0.5 + 0.5 * 0.5 = 0.75; binomial sd over 400 draws is 0.022


def test_longest_caption_probability_leaves_evaluation_and_the_default_draw_unchanged() -> None:
    samples = make_samples(64)
    plain = PretrainCollator(itm=False).for_split(train=False, seed=6)(samples)
    evaluation = PretrainCollator(itm=False, longest_caption_probability=1.0).for_split(train=False, seed=6)(
        samples
    )
    assert evaluation.captions == plain.captions  # val and test prompts do not depend on the option
    zero = PretrainCollator(itm=False, longest_caption_probability=0.0).for_split(train=True, seed=6)(samples)
    assert zero.captions == PretrainCollator(itm=False).for_split(train=True, seed=6)(samples).captions


def test_longest_caption_probability_out_of_range_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="longest_caption_probability must be in"):
        PretrainCollator(longest_caption_probability=1.5)


def test_mlm_labels_only_at_masked_positions_and_equal_the_original() -> None:
    batch = PretrainCollator(mlm_probability=0.4, itm=False).for_split(train=True, seed=1)(make_samples(16))
    original = original_ids(batch)
    labelled = batch.mlm_labels != -100
    assert labelled.any() and not labelled.all()
    assert torch.equal(batch.mlm_labels[labelled], original[labelled])
    assert torch.equal(batch.mlm_text_ids[~labelled], original[~labelled])  # unmasked tokens untouched
    assert torch.equal(batch.text_ids, original)  # the clean text (ITM's view) is never masked
    special = (original == 101) | (original == 102) | (original == 0)  # [CLS], [SEP], [PAD]
    assert not labelled[special].any()
    replaced = batch.mlm_text_ids[labelled]
    assert (replaced == load_tokenizer().mask_token_id).float().mean() > 0.5  # 80 % [MASK]


def test_whole_word_masking_masks_all_pieces_of_a_word() -> None:
    tokenizer = load_tokenizer()
    assert tokenizer.tokenize("hexagon") == ["he", "##xa", "##gon"]
    samples = [DecodedSample(f"k{i}", torch.zeros(3, 16, 16), ["hexagon " * 8]) for i in range(8)]
    batch = PretrainCollator(mlm_probability=0.3, whole_word_masking=True, itm=False).for_split(
        train=True, seed=2
    )(samples)
    words = (batch.mlm_labels[:, 1:25] != -100).reshape(8, 8, 3)  # 8 words of 3 pieces after [CLS]
    assert torch.equal(words.all(-1), words.any(-1))  # a word is masked entirely or not at all
    assert words.all(-1).any() and not words.all(-1).all()
    masked = batch.mlm_labels != -100
    assert (batch.mlm_text_ids[masked] == tokenizer.mask_token_id).all()


def test_itm_negatives_are_paired_with_another_samples_image_and_mlm_keeps_its_own() -> None:
    samples = make_samples(16)
    batch = PretrainCollator(mlm_probability=0.5, itm=True).for_split(train=True, seed=3)(samples)
    assert batch.itm_labels.dtype == torch.long and set(batch.itm_labels.tolist()) == {0, 1}
    assert [image_index(p) for p in batch.pixels] == list(range(16))  # pixels: each sample's own image
    for i, (label, source) in enumerate(zip(batch.itm_labels.tolist(), batch.itm_image_index.tolist())):
        assert (source == i) == (label == 1)
    negatives = batch.itm_labels == 0
    assert (batch.mlm_labels[negatives] != -100).any()  # MLM learns from every sample, with its own image


SHAPE_COLOURS = ("red", "blue", "green")


def shapes_samples(n: int) -> list[DecodedSample]:
    """Samples of one caption each, "there is a <colour> circle", about an image holding a circle of the
    colour ``SHAPE_COLOURS[i % 3]``: the caption of sample ``i`` is true of every image with that colour."""
    samples = []
    for i in range(n):
        colour = SHAPE_COLOURS[i % len(SHAPE_COLOURS)]
        objects = [{"bbox": [4, 4, 10, 10], "category": "circle", "attributes": [colour, "small", "filled"]}]
        samples.append(
            DecodedSample(
                key=f"s{i:03d}",
                image=torch.full((3, 8, 8), float(i)),
                captions=[f"there is a {colour} circle"],
                annotation={"objects": objects},
            )
        )
    return samples


def test_no_negative_is_shown_an_image_its_caption_is_true_of() -> None:
    samples = shapes_samples(12)
    checked = PretrainCollator(itm_negative_check=ShapesCaptionCheck()).for_split(train=True, seed=0)
    plain = PretrainCollator().for_split(train=True, seed=0)
    negatives = plain_false = 0
    for _ in range(40):
        batch, control = checked(samples), plain(samples)
        for i, (label, source) in enumerate(zip(batch.itm_labels.tolist(), batch.itm_image_index.tolist())):
            assert (source == i) == (label == 1)
            if label == 0:
                negatives += 1
                assert source % 3 != i % 3, (i, source)  # its image holds another colour
        for i, (label, source) in enumerate(
            zip(control.itm_labels.tolist(), control.itm_image_index.tolist())
        ):
            plain_false += label == 0 and source % 3 == i % 3
    assert negatives > 0.4 * 40 * 12  # about half are still negatives
    assert plain_false > 0  # without the check, some "negatives" are true of their image


def test_checked_negatives_draw_nothing_when_no_negative_is_true() -> None:
    # every caption names its own sample's colour, distinct across the batch: no negative is ever true
    samples = shapes_samples(3)
    checked = PretrainCollator(itm_negative_check=ShapesCaptionCheck()).for_split(train=True, seed=2)
    plain = PretrainCollator().for_split(train=True, seed=2)
    for _ in range(5):
        assert_batches_equal(checked(samples), plain(samples))


def test_a_negative_with_no_false_image_becomes_a_positive() -> None:
    samples = shapes_samples(1) * 4  # four samples of the same scene and caption
    batch = PretrainCollator(itm_negative_check=ShapesCaptionCheck()).for_split(train=True, seed=0)(samples)
    assert batch.itm_labels.tolist() == [1, 1, 1, 1] and batch.itm_image_index.tolist() == [0, 1, 2, 3]


def test_a_check_that_cannot_read_the_batch_is_named() -> None:
    collator = PretrainCollator(itm_negative_check=ShapesCaptionCheck()).for_split(train=True, seed=0)
    with pytest.raises(ValueError, match=r"itm_negative_check \(ShapesCaptionCheck\).*s000.*not a caption"):
        for _ in range(10):  # until a negative is drawn
            collator(make_samples(4))


def test_batch_of_one_has_no_negative() -> None:
    collator = PretrainCollator(itm=True).for_split(train=True)
    for _ in range(5):
        batch = collator(make_samples(1))
        assert batch.itm_labels.tolist() == [1] and batch.itm_image_index.tolist() == [0]
        assert image_index(batch.pixels[0]) == 0


def test_shuffle_images_replaces_every_image() -> None:
    samples = make_samples(9)
    batch = PretrainCollator(itm=False, shuffle_images=True).for_split(train=True, seed=4)(samples)
    sources = [image_index(p) for p in batch.pixels]
    assert all(source != i for i, source in enumerate(sources))
    assert sorted(sources) == list(range(9))  # a permutation: every image is still used once
    assert batch.keys == [s.key for s in samples]  # texts stay where they were


def test_shuffle_images_is_a_training_control() -> None:
    samples = make_samples(6)
    evaluation = PretrainCollator(itm=False, shuffle_images=True).for_split(train=False, seed=4)(samples)
    assert [image_index(p) for p in evaluation.pixels] == list(range(6))  # true pairs, to measure the run


def test_an_unbound_collator_refuses_to_run() -> None:
    with pytest.raises(RuntimeError, match=r"PretrainCollator is a data part: call its for_split"):
        PretrainCollator()(make_samples(2))


def test_shuffle_images_before_itm() -> None:
    samples = make_samples(8)
    batch = PretrainCollator(itm=True, shuffle_images=True).for_split(train=True, seed=5)(samples)
    sources = [image_index(p) for p in batch.pixels]
    assert all(source != i for i, source in enumerate(sources))  # even "positives" see a foreign image
    assert batch.itm_labels is not None and (batch.itm_labels == 1).any()


def test_derangement_has_no_fixed_point() -> None:
    generator = torch.Generator().manual_seed(0)
    for n in range(2, 12):
        d = random_derangement(n, generator)
        assert sorted(d) == list(range(n)) and all(d[i] != i for i in range(n))


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    samples = make_samples(12)
    a, b, c = (PretrainCollator().for_split(train=True, seed=seed) for seed in (7, 7, 8))
    batches_a = [a(samples) for _ in range(3)]
    batches_b = [b(samples) for _ in range(3)]
    for x, y in zip(batches_a, batches_b):
        assert_batches_equal(x, y)
    assert not torch.equal(batches_a[0].itm_labels, c(samples).itm_labels)
    assert not torch.equal(batches_a[0].itm_labels, batches_a[1].itm_labels)  # the stream advances


def test_pickled_collator_starts_afresh() -> None:
    samples = make_samples(12)
    used = PretrainCollator().for_split(train=True, seed=9)
    used(samples)
    copy = pickle.loads(pickle.dumps(used))
    assert_batches_equal(copy(samples), PretrainCollator().for_split(train=True, seed=9)(samples))


def test_mlm_off_leaves_text_unmasked() -> None:
    batch = PretrainCollator(mlm_probability=0.0, itm=False).for_split(train=True)(make_samples(4))
    assert batch.mlm_labels is None and batch.mlm_text_ids is None
    assert torch.equal(batch.text_ids, original_ids(batch))


def test_truncates_to_max_text_len() -> None:
    samples = [DecodedSample("long", torch.zeros(3, 16, 16), ["word " * 100])]
    batch = PretrainCollator(max_text_len=12).for_split(train=True)(samples)
    assert batch.text_ids.shape == (1, 12)


class _SameSamplesPerWorker(IterableDataset):
    """Every worker yields the same samples, so any difference between their batches is the collator's."""

    def __init__(self, samples: list[DecodedSample]) -> None:
        self.samples = samples

    def __iter__(self) -> Iterator[DecodedSample]:
        return iter(self.samples)


def _worker_batches(seed: int) -> list[Batch]:
    loader = DataLoader(
        _SameSamplesPerWorker(make_samples(8)),
        batch_size=8,
        num_workers=2,
        collate_fn=PretrainCollator(mlm_probability=0.5).for_split(train=True, seed=seed),
    )
    return list(loader)


def test_loader_workers_differ_and_runs_repeat() -> None:
    first, second = _worker_batches(seed=11), _worker_batches(seed=11)
    assert len(first) == 2  # one batch per worker, in worker order
    assert not torch.equal(first[0].mlm_labels, first[1].mlm_labels)
    for x, y in zip(first, second):
        assert_batches_equal(x, y)


def scene_samples(n: int, seed: int = 0) -> list[DecodedSample]:
    """Generated shapes scenes with their own captions and object annotations (images are placeholders)."""
    from vlp.datamodules.synth.scenes import sample_scene
    from vlp.datamodules.synth.text import captions_for

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        scene = sample_scene(rng, 64)
        objects = [
            {"bbox": list(o.box), "category": o.shape, "attributes": [o.colour, o.size, o.style]}
            for o in scene.objects
        ]
        samples.append(
            DecodedSample(
                key=f"s{i:03d}",
                image=torch.full((3, 8, 8), float(i)),
                captions=captions_for(scene, rng, 64),
                annotation={"objects": objects},
            )
        )
    return samples


def test_caption_edit_negatives_read_a_false_edit_with_their_own_image() -> None:
    from vlp.datamodules.synth.edits import ShapesCaptionEditor

    samples = scene_samples(16)
    collator = PretrainCollator(
        itm_negative_check=ShapesCaptionCheck(), itm_caption_edits=1.0, caption_editor=ShapesCaptionEditor()
    )
    train = collator.for_split(train=True, seed=0)
    tokenizer = train.tokenizer
    edited = image_negatives = 0
    for _ in range(10):
        batch = train(samples)
        itm_texts = tokenizer.batch_decode(batch.itm_text_ids, skip_special_tokens=True)
        assert (
            tokenizer.batch_decode(batch.text_ids, skip_special_tokens=True) == batch.captions
        )  # MLM's text
        for i, label in enumerate(batch.itm_labels.tolist()):
            source, annotation = batch.itm_image_index[i].item(), samples[i].annotation
            if label == 1:
                assert source == i and itm_texts[i] == batch.captions[i]
            elif itm_texts[i] != batch.captions[i]:  # an edit negative: own image, an edit false of it
                edited += 1
                assert source == i
                assert ShapesCaptionEditor().edits(batch.captions[i]).count(itm_texts[i]) == 1
                assert not ShapesCaptionCheck()(itm_texts[i], [annotation])[0]
            else:  # no false edit: an image negative as before
                image_negatives += 1
                assert source != i
    assert edited > 0.8 * (edited + image_negatives)
    evaluation = collator.for_split(train=False, seed=0)(samples)
    assert evaluation.itm_text_ids is None  # evaluation keeps image negatives: val ITM is the same task
    assert (
        evaluation.itm_image_index[evaluation.itm_labels == 0] != torch.arange(16)[evaluation.itm_labels == 0]
    ).all()


def test_caption_edits_without_an_editor_or_check_are_refused_by_name() -> None:
    from vlp.datamodules.synth.edits import ShapesCaptionEditor

    with pytest.raises(
        ValueError, match=r"itm_caption_edits=0.5 needs a caption_editor .* and an itm_negative_check"
    ):
        PretrainCollator(itm_caption_edits=0.5, caption_editor=ShapesCaptionEditor())
    with pytest.raises(ValueError, match="itm_caption_edits must be in"):
        PretrainCollator(itm_caption_edits=1.5)
