"""Collation of decoded samples into a :class:`~vlp.batch.Batch`: what every collator shares
(:class:`SampleCollator`) and the pre-training collator (:class:`PretrainCollator`, MLM + ITM).

Decoding (:mod:`vlp.datamodules.decode`, in loader workers) turns every webdataset sample into a
:class:`~vlp.datamodules.decode.DecodedSample` or a :class:`~vlp.datamodules.decode.SkippedSample` marker;
markers travel to the collator so that skips are counted in the batch the main process receives
(``Batch.num_skipped`` / ``skipped_keys``).

Randomness (caption choice, image shuffling, ITM negatives, MLM masking) comes from the ``generator``
passed with each call: a :class:`~vlp.datamodules.stream.ShardStream` seeds one per batch from the batch's
coordinates, which is what makes a resumed run see the same batches. Called without one, the collator
draws from its own generator, derived lazily on first use in each process from ``(seed, rank, loader
worker id)`` (``seed`` is the data module's, handed over by ``for_split``); a pickled copy (what each
DataLoader worker receives) starts afresh.
"""

from __future__ import annotations

import logging
import math
import os
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Self

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import get_worker_info
from transformers import BatchEncoding, DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from vlp.batch import Batch
from vlp.datamodules.decode import DecodedSample, SampleDecoder, SkippedSample
from vlp.datamodules.grounded_masking import grounded_word_mask
from vlp.datamodules.parts import CaptionCheck, CaptionEditor, Collator, Decoder, Vocab
from vlp.tokenizers import BUNDLED, load_tokenizer

log = logging.getLogger(__name__)


def pad_images(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-pad ``[3, h, w]`` images to the batch's largest height and width.

    Returns ``pixels [B, 3, H, W]`` of the images' dtype and ``pixel_mask [B, H, W]`` (True = real pixel,
    top-left aligned), made by :func:`batch_zeros`. ``uint8`` images
    (:class:`~vlp.datamodules.transforms.ViltTransform`'s) stay ``uint8``: the model's float inputs are
    made on its device (:func:`~vlp.datamodules.normalise.normalise_batch`); float images are taken as
    model inputs already.
    """
    dtypes = {image.dtype for image in images}
    if len(dtypes) > 1:
        raise ValueError(f"the images of one batch must share a dtype, got {sorted(map(str, dtypes))}")
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    first = images[0]
    pixels = batch_zeros((len(images), first.shape[0], height, width), first.dtype)
    pixel_mask = batch_zeros((len(images), height, width), torch.bool)
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        pixels[i, :, :h, :w] = image
        pixel_mask[i, :h, :w] = True
    return pixels, pixel_mask


def batch_zeros(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """A zero tensor for a batch. In a DataLoader worker it is new shared memory, as PyTorch's
    ``default_collate`` makes its batches: sending it to the main process then copies nothing (a private
    tensor is copied into new shared memory), and its zeros cost no pass over the memory (a new shared
    memory file reads as zeros, POSIX ``ftruncate``), so a batch's padding is never written."""
    if get_worker_info() is None:
        return torch.zeros(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))


def random_derangement(n: int, generator: torch.Generator) -> list[int]:
    """Indices ``d`` with ``d[i] != i`` for every ``i`` (a random ``n``-cycle); identity when ``n < 2``.

    A single cycle through a random order is always a derangement, so no rejection loop is needed.
    """
    if n < 2:
        return list(range(n))
    order = torch.randperm(n, generator=generator).tolist()
    derangement = [0] * n
    for position, index in enumerate(order):
        derangement[index] = order[(position + 1) % n]
    return derangement


def itm_pairing(n: int, generator: torch.Generator, negative_prob: float = 0.5) -> tuple[list[int], Tensor]:
    """Choose, per sample, whose image it is shown with: its own (label 1) or another sample's (label 0).

    Each sample independently becomes a negative with ``negative_prob``; a negative's image comes from a
    uniformly chosen *other* sample of the batch. A batch of one has no other image, so no negatives.
    Returns the source index of each sample's image and ``itm_labels [n]`` (long).
    """
    own = torch.arange(n)
    if n < 2:
        return own.tolist(), torch.ones(n, dtype=torch.long)
    negative = torch.rand(n, generator=generator) < negative_prob
    partner = (own + torch.randint(1, n, (n,), generator=generator)) % n
    sources = torch.where(negative, partner, own)
    return sources.tolist(), (~negative).long()


def redraw_true_negatives(
    sources: list[int],
    itm_labels: Tensor,
    captions: Sequence[str],
    annotations: Sequence[Mapping[str, Any]],
    check: CaptionCheck,
    generator: torch.Generator,
) -> tuple[list[int], Tensor]:
    """Give each negative whose caption ``check`` says is true of its image another image of the batch.

    ``annotations[j]`` describes image ``j``. The new image is drawn uniformly among the batch's other
    images the caption is false of; when there is none, the sample keeps its own image and becomes a
    positive. Negatives whose caption is false of their image keep it, and no random number is drawn for
    them, so a batch without such negatives is the batch :func:`itm_pairing` made.
    """
    sources = list(sources)
    itm_labels = itm_labels.clone()
    for i, source in enumerate(sources):
        if itm_labels[i] == 1 or not check(captions[i], [annotations[source]])[0]:
            continue
        true_of = check(captions[i], annotations)
        candidates = [j for j, holds in enumerate(true_of) if j != i and not holds]
        if candidates:
            sources[i] = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
        else:
            sources[i] = i
            itm_labels[i] = 1
    return sources, itm_labels


def caption_edit_negatives(
    itm_labels: Tensor,
    captions: Sequence[str],
    annotations: Sequence[Mapping[str, Any]],
    editor: CaptionEditor,
    check: CaptionCheck,
    share: float,
    generator: torch.Generator,
) -> tuple[list[int], list[str]]:
    """Turn a ``share`` of the ITM negatives into caption-edit negatives of their own image.

    For each negative ``i`` (``itm_labels[i] == 0``), with probability ``share``: ``editor``'s edits of
    ``captions[i]`` are tried in a random order, and the first one ``check`` says is false of image ``i``
    (``annotations[i]``) becomes its ITM caption, shown with its own image. A negative without such an edit
    stays an image negative. Returns which of them became edit negatives (indices) and the ITM captions
    (the caption itself for every other sample).
    """
    itm_captions = list(captions)
    edited = []
    for i in range(len(captions)):
        if itm_labels[i] == 1 or float(torch.rand(1, generator=generator)) >= share:
            continue
        edits = editor.edits(captions[i])
        for k in torch.randperm(len(edits), generator=generator).tolist():
            if not check(edits[k], [annotations[i]])[0]:
                itm_captions[i] = edits[k]
                edited.append(i)
                break
    return edited, itm_captions


def pick_caption(
    captions: Sequence[str], generator: torch.Generator, longest_probability: float = 0.0
) -> str:
    """One caption: with ``longest_probability`` the longest (most words; the first of equals), otherwise
    uniformly at random. At ``0`` it draws exactly as a plain uniform pick does (no extra random number)."""
    if longest_probability > 0 and float(torch.rand((), generator=generator)) < longest_probability:
        return max(captions, key=lambda caption: len(caption.split()))
    return captions[int(torch.randint(len(captions), (1,), generator=generator))]


def process_seed(seed: int) -> int:
    """Seed for this process's generator, mixed from ``(seed, distributed rank, loader worker)``.

    The main process counts as worker 0 and DataLoader worker ``k`` as ``k + 1``.
    """
    info = torch.utils.data.get_worker_info()
    worker = 0 if info is None else info.id + 1
    rank = (
        dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))
    )
    return int(np.random.SeedSequence([seed, rank, worker]).generate_state(1)[0])


class SampleCollator(Collator):
    """What the collators share: ``list[decoded sample | SkippedSample] -> Batch``, text tokenized.

    Skip markers are counted in the batch (``num_skipped`` / ``skipped_keys``), the first
    ``max_logged_skips`` logged by name, and dropped; subclasses implement :meth:`collate` on the usable
    samples. An all-skipped batch comes back empty (``len(batch) == 0``, tensors None) with its skips
    counted. Randomness comes from the generator passed with each call, else from this process's own
    (:meth:`generator`), seeded from the ``seed`` :meth:`for_split` hands over.

    Args:
        tokenizer, max_text_len: how the text is tokenized (longer text is truncated).
        max_logged_skips: skipped samples logged by name (the rest are counted).
    """

    def __init__(self, tokenizer: str = BUNDLED, max_text_len: int = 40, max_logged_skips: int = 5) -> None:
        self.tokenizer_name = tokenizer
        self.max_text_len = max_text_len
        self.max_logged_skips = max_logged_skips
        self.seed = 0  # the split's, handed over by for_split
        self._generator: torch.Generator | None = None
        self._logged_skips = 0

    def for_split(self, train: bool, seed: int = 0, vocab: Vocab | None = None) -> Self:
        """The split's collator, randomness from ``seed`` when no generator is passed."""
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        bound = self._bound_copy()
        bound.seed = seed
        return bound

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the per-process state, so each loader worker derives its own generator."""
        state = self.__dict__.copy()
        state.update(_generator=None, _logged_skips=0)
        return state

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.tokenizer_name)

    def generator(self) -> torch.Generator:
        """This process's generator, created on first use from ``(seed, rank, worker)``."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(process_seed(self.seed))
        return self._generator

    def tokenize(self, texts: list[str], **options: Any) -> BatchEncoding:
        """``texts`` tokenized into tensors, padded to the longest, truncated to ``max_text_len``;
        ``options`` ask the tokenizer for more (offsets, special-token masks) or replace a setting (a
        shorter ``max_length``)."""
        settings: dict[str, Any] = {
            "padding": "longest",
            "truncation": True,
            "max_length": self.max_text_len,
            "return_token_type_ids": False,
            "return_tensors": "pt",
        }
        return self.tokenizer(texts, **(settings | options))

    def images(self, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``pixels`` and ``pixel_mask`` of the images (:func:`pad_images`)."""
        return pad_images(images)

    def text_image_batch(
        self,
        keys: list[str],
        images: Sequence[Tensor],
        texts: list[str],
        encoding: BatchEncoding | None = None,
        **fields: Any,
    ) -> Batch:
        """The batch of ``images`` (:meth:`images`) and ``texts`` (as ``captions``, and their ``encoding``,
        by default :meth:`tokenize`'s, as ``text_ids``/``text_mask``), row keys ``keys``, the task's
        ``fields`` besides."""
        pixels, pixel_mask = self.images(images)
        encoding = self.tokenize(texts) if encoding is None else encoding
        return Batch(
            keys=keys,
            pixels=pixels,
            pixel_mask=pixel_mask,
            text_ids=encoding["input_ids"],
            text_mask=encoding["attention_mask"].bool(),
            captions=texts,
            **fields,
        )

    def __call__(self, samples: Sequence[Any], generator: torch.Generator | None = None) -> Batch:
        """Collate; randomness comes from ``generator`` when given (a stream passes one per batch,
        seeded by the batch's coordinates), else from this process's own generator."""
        self._check_bound()
        kept = [s for s in samples if not isinstance(s, SkippedSample)]
        skipped = [s for s in samples if isinstance(s, SkippedSample)]
        self._log_skips(skipped)
        skipped_keys = [s.key for s in skipped]
        if not kept:
            return Batch(keys=[], num_skipped=len(skipped), skipped_keys=skipped_keys)
        batch = self.collate(kept, generator if generator is not None else self.generator())
        return replace(batch, num_skipped=len(skipped), skipped_keys=skipped_keys)

    @abstractmethod
    def collate(self, samples: list[Any], generator: torch.Generator) -> Batch:
        """The batch of the usable (decoded) samples; skips are added by :meth:`__call__`."""

    def _log_skips(self, skipped: Sequence[SkippedSample]) -> None:
        for marker in skipped:
            if self._logged_skips >= self.max_logged_skips:
                return
            self._logged_skips += 1
            tail = (
                " (further skips are counted, not logged)"
                if self._logged_skips == self.max_logged_skips
                else ""
            )
            log.warning("vlp: skipped sample %s: %s%s", marker.key, marker.reason, tail)


class PretrainCollator(SampleCollator):
    """``list[DecodedSample | SkippedSample] -> Batch`` for MLM + ITM pre-training.

    Per batch: skip markers are counted and dropped; one caption per sample is chosen at random;
    with ``shuffle_images`` every image is first replaced by another sample's (a random derangement, so
    image and text are unrelated: the "blind" control run; a batch of one keeps its image, there being no
    other); images are padded once; captions are tokenized (padding to the longest, truncating to
    ``max_text_len``) into ``text_ids``, and a masked copy ``mlm_text_ids`` with ``mlm_labels`` is made by
    transformers' ``DataCollatorForLanguageModeling``.

    As in official ViLT, MLM and ITM are separate views of the batch: MLM reads the masked text with the
    sample's own image; ITM reads the unmasked text with the image of ``itm_image_index`` (another
    sample's, a negative, with probability 0.5; ``itm_labels`` 0). The task gathers the ITM images on its
    device, so pixels travel once. ``mlm_probability=0`` turns MLM off (``mlm_text_ids``/``mlm_labels``
    None); ``itm=False`` leaves ``itm_labels``/``itm_image_index`` None. Whole-word masking (transformers v5)
    always replaces a chosen word by ``[MASK]`` (no 10 % random / 10 % kept split). On top of that, every
    whole word of ``grounded_words`` (e.g. a dataset's categories and attributes) is masked with
    ``grounded_mask_probability`` (:mod:`vlp.datamodules.grounded_masking`: targets only the image can
    supply, so MLM learns to read the image); the words are ``grounded_words`` or, when that is None,
    ``vocab.json``'s ``categories`` and ``attributes``. With ``itm_negative_check`` (a
    :class:`~vlp.datamodules.parts.CaptionCheck`), a negative whose caption is true of the image it was
    given is given another (:func:`redraw_true_negatives`), in every split, so that validation scores
    ITM against right labels too. With ``itm_caption_edits`` and a ``caption_editor`` (a
    :class:`~vlp.datamodules.parts.CaptionEditor`; the check is then required), that share of the training
    negatives instead keep their own image and read an edit of their caption that the check says is false
    of it (:func:`caption_edit_negatives`: "two red shapes" for an image with three); the ITM view then reads
    ``itm_text_ids``/``itm_text_mask``, the MLM view the caption as written. Evaluation splits keep image
    negatives only, so val ITM measures the same task with or without edits. With
    ``longest_caption_probability``, that share of the training samples reads its longest caption instead
    of a random one: where captions range from one-object mentions to listings of the whole scene, the
    longest is the one that describes everything drawn, the clearest condition for text→image generation.
    Evaluation splits keep the uniform draw, so val and test prompts are the same with or without it.

    A collator part (:class:`~vlp.datamodules.parts.Collator`) of samples from a
    :class:`~vlp.datamodules.decode.SampleDecoder`: :meth:`for_split` hands over the seed and the
    vocabulary, and shuffles images (the control above) in training only, so that validation and test
    keep true pairs and measure what the run learnt.

    An all-skipped batch comes back empty (``len(batch) == 0``, tensors None) with its skips counted.
    """

    def __init__(
        self,
        tokenizer: str = BUNDLED,
        max_text_len: int = 40,
        mlm_probability: float = 0.15,
        whole_word_masking: bool = False,
        itm: bool = True,
        shuffle_images: bool = False,
        grounded_mask_probability: float = 0.0,
        grounded_words: list[str] | None = None,
        itm_negative_check: CaptionCheck | None = None,
        itm_caption_edits: float = 0.0,
        caption_editor: CaptionEditor | None = None,
        longest_caption_probability: float = 0.0,
        max_logged_skips: int = 5,
    ) -> None:
        if not 0.0 <= longest_caption_probability <= 1.0:
            raise ValueError(
                f"longest_caption_probability must be in [0, 1], got {longest_caption_probability}"
            )
        if not 0.0 <= mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
        if not 0.0 <= grounded_mask_probability <= 1.0:
            raise ValueError(f"grounded_mask_probability must be in [0, 1], got {grounded_mask_probability}")
        if grounded_mask_probability > 0 and grounded_words is not None and not grounded_words:
            raise ValueError("grounded_mask_probability > 0 needs grounded_words (the words to mask)")
        if not 0.0 <= itm_caption_edits <= 1.0:
            raise ValueError(f"itm_caption_edits must be in [0, 1], got {itm_caption_edits}")
        if itm_caption_edits > 0 and (caption_editor is None or itm_negative_check is None):
            raise ValueError(
                f"itm_caption_edits={itm_caption_edits} needs a caption_editor (which edits a caption) and an "
                "itm_negative_check (which keeps only the edits false of the image), e.g. "
                "vlp.datamodules.synth.edits.ShapesCaptionEditor and vlp.datamodules.synth.truth.ShapesCaptionCheck"
            )
        if itm_caption_edits > 0 and not itm:
            raise ValueError("itm_caption_edits > 0 makes ITM negatives: it needs itm=True")
        super().__init__(tokenizer, max_text_len, max_logged_skips)
        self.mlm_probability = mlm_probability
        self.whole_word_masking = whole_word_masking
        self.itm = itm
        self.shuffle_images = shuffle_images
        self.grounded_mask_probability = grounded_mask_probability
        self.grounded_words = None if grounded_words is None else list(grounded_words)
        self.itm_negative_check = itm_negative_check
        self.itm_caption_edits = itm_caption_edits
        self.caption_editor = caption_editor
        self.longest_caption_probability = longest_caption_probability
        # the split's settings, handed over by for_split
        self.shuffle = False
        self.edit_share = 0.0
        self.longest_share = 0.0
        self.words: tuple[str, ...] = ()
        self._masker: DataCollatorForLanguageModeling | None = None

    def decoder_type(self) -> type[Decoder]:
        return SampleDecoder

    def for_split(self, train: bool, seed: int = 0, vocab: Vocab | None = None) -> Self:
        """The split's collator: images shuffled when :meth:`shuffles` says so, randomness from ``seed``
        (when no generator is passed), grounded words from ``vocab`` unless ``grounded_words`` lists them."""
        bound = super().for_split(train, seed, vocab)
        bound.shuffle = self.shuffles(train)
        bound.edit_share = self.itm_caption_edits if train else 0.0
        bound.longest_share = self.longest_caption_probability if train else 0.0
        bound.words = tuple(self.masked_words(vocab or Vocab()))
        return bound

    def shuffles(self, train: bool) -> bool:
        """Whether the split's images are shuffled: with ``shuffle_images``, in training only."""
        return train and self.shuffle_images

    def masked_words(self, vocab: Vocab) -> list[str]:
        """The words grounded masking picks from: ``grounded_words``, else the vocabulary's categories
        and attributes; none when grounded masking is off."""
        if self.grounded_mask_probability == 0:
            return []
        if self.grounded_words is not None:
            return list(self.grounded_words)
        words = [*vocab.words("categories"), *vocab.words("attributes")]
        if not words:
            raise ValueError(
                f"grounded_mask_probability={self.grounded_mask_probability} but {vocab.path} has no "
                "'categories' or 'attributes' to mask: list the words in grounded_words"
            )
        return words

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_masker": None}

    def masker(self) -> DataCollatorForLanguageModeling:
        """transformers' MLM masker; each call to the collator points its ``generator`` at the batch's."""
        if self._masker is None:
            masker = DataCollatorForLanguageModeling(
                tokenizer=self.tokenizer,
                mlm=True,
                whole_word_mask=self.whole_word_masking,
                mlm_probability=self.mlm_probability,
                mask_replace_prob=1.0 if self.whole_word_masking else 0.8,
                random_replace_prob=0.0 if self.whole_word_masking else 0.1,
            )
            self._masker = masker
        return self._masker

    def collate(self, samples: list[DecodedSample], generator: torch.Generator) -> Batch:
        images = [s.image for s in samples]
        shown = list(range(len(samples)))  # whose image each position holds
        if self.shuffle:
            shown = random_derangement(len(images), generator)
            images = [images[j] for j in shown]
        itm_labels = sources = None
        if self.itm:
            sources, itm_labels = itm_pairing(len(images), generator)
        captions = [pick_caption(s.captions, generator, self.longest_share) for s in samples]
        itm_text: dict[str, Tensor] = {}
        if sources is not None and itm_labels is not None:
            sources, itm_labels, itm_text = self.checked_negatives(
                samples, shown, captions, sources, itm_labels, generator
            )
        itm_image_index = None if sources is None else torch.tensor(sources, dtype=torch.long)
        encoding = self.tokenize(captions, return_offsets_mapping=True, return_special_tokens_mask=True)
        mlm_text_ids, mlm_labels = self._mask(captions, encoding, generator)
        return self.text_image_batch(
            [s.key for s in samples],
            images,
            captions,
            encoding,
            mlm_text_ids=mlm_text_ids,
            mlm_labels=mlm_labels,
            itm_labels=itm_labels,
            itm_image_index=itm_image_index,
            **itm_text,
        )

    def checked_negatives(
        self,
        samples: list[DecodedSample],
        shown: list[int],
        captions: list[str],
        sources: list[int],
        itm_labels: Tensor,
        generator: torch.Generator,
    ) -> tuple[list[int], Tensor, dict[str, Tensor]]:
        """With ``itm_negative_check``: true negatives redrawn (:func:`redraw_true_negatives`), then a share
        made caption-edit negatives (:func:`caption_edit_negatives`); the ITM text fields these need.
        ``shown[i]`` is the sample whose image position ``i`` holds."""
        if self.itm_negative_check is None:
            return sources, itm_labels, {}
        annotations = [samples[j].annotation for j in shown]
        fields, parts = "itm_negative_check", type(self.itm_negative_check).__name__
        try:
            sources, itm_labels = redraw_true_negatives(
                sources, itm_labels, captions, annotations, self.itm_negative_check, generator
            )
            if self.edit_share == 0 or self.caption_editor is None:
                return sources, itm_labels, {}
            fields, parts = f"{fields} / caption_editor", f"{parts} / {type(self.caption_editor).__name__}"
            edited, itm_captions = caption_edit_negatives(
                itm_labels, captions, annotations, self.caption_editor, self.itm_negative_check,
                self.edit_share, generator,
            )  # fmt: skip
        except ValueError as exn:
            keys = ", ".join(s.key for s in samples[:3])
            raise ValueError(f"{fields} ({parts}) cannot read the batch of {keys}, ...: {exn}") from None
        for i in edited:
            sources[i] = i
        encoding = self.tokenize(itm_captions)
        return (
            sources,
            itm_labels,
            {
                "itm_text_ids": encoding["input_ids"],
                "itm_text_mask": encoding["attention_mask"].bool(),
            },
        )

    def _mask(
        self, captions: list[str], encoding: BatchEncoding, generator: torch.Generator
    ) -> tuple[Tensor | None, Tensor | None]:
        """Unless MLM is off, a masked copy of the captions' tokens: ``mlm_text_ids``, ``mlm_labels``."""
        text_ids = encoding["input_ids"]
        if self.mlm_probability == 0 and self.grounded_mask_probability == 0:
            return None, None
        if self.mlm_probability > 0:
            masker = self.masker()
            masker.generator = generator
            mlm_text_ids, mlm_labels = masker.torch_mask_tokens(
                text_ids.clone(),
                special_tokens_mask=encoding["special_tokens_mask"],
                offset_mapping=encoding["offset_mapping"],
            )
        else:
            mlm_text_ids, mlm_labels = text_ids.clone(), torch.full_like(text_ids, -100)
        if self.grounded_mask_probability > 0:
            picked = grounded_word_mask(
                captions, encoding, self.words, self.grounded_mask_probability, generator
            )
            picked &= mlm_labels == -100
            mlm_text_ids[picked] = self.tokenizer.mask_token_id
            mlm_labels[picked] = text_ids[picked]
        return mlm_text_ids, mlm_labels
