"""Webdataset shards as a LightningDataModule for MLM + ITM pre-training.

A dataset folder holds one subfolder of ``*.tar`` shards per split and a ``vocab.json``. Every split is
read as a :class:`~vlp.datamodules.stream.ShardStream` (tar reader, shard shuffle, split by
rank and by worker, sample shuffle, decode, collation with
:class:`~vlp.datamodules.collate.PretrainCollator`) behind a :class:`~vlp.datamodules.stream.StreamLoader`.
All randomness is a function of ``(seed, epoch, rank, worker, position)``: without resampling one epoch
covers every sample exactly once across ranks and workers, and a run resumed from a checkpoint continues
with exactly the batches an uninterrupted run would have seen (the position is saved by Lightning's
stateful-loader hooks).

Decoding runs in the loader workers and never raises for a bad sample: a corrupt or oversized image, a
missing or unreadable json, a sample without captions, a duplicate key or a sample cut off by a truncated
shard becomes a :class:`~vlp.datamodules.collate.SkippedSample` that the collator counts into
``Batch.num_skipped`` and logs with its key and reason; the DataModule keeps the running total in
:attr:`ShardDataModule.num_skipped` (tallied in ``on_before_batch_transfer``, in the main process). A
shard that cannot be read is reported by name and the stream goes on with the next one
(:mod:`vlp.datamodules.tar_reader`). Images of any mode (greyscale, 16-bit, CMYK, with transparency)
are converted to 8-bit RGB with their colours kept.
"""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from PIL import Image
from torch import Tensor

from vlp.batch import Batch
from vlp.datamodules.collate import DecodedSample, PretrainCollator, SkippedSample
from vlp.datamodules.stream import ShardStream, StreamLoader, local_sample_counts, shared_shards
from vlp.datamodules.synth.shapes import ShapesConfig, shapes_folder_state, write_shapes
from vlp.datamodules.tar_reader import SKIP
from vlp.datamodules.transforms import ViltTransform
from vlp.tokenizers import BUNDLED

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_IMAGE_PIXELS = 89_478_485
"""Default ``max_image_pixels``: PIL's own decompression-bomb threshold (about 9459 x 9459)."""


def text_caption(txt: bytes) -> str:
    """An img2dataset ``txt`` caption: UTF-8 (a byte-order mark is dropped); a ``ValueError`` naming the
    first byte that is not, since text in another encoding would train on garbled words."""
    try:
        return txt.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exn:
        raise ValueError(
            f"txt caption is not UTF-8 text (byte {txt[exn.start]:#04x} at position {exn.start})"
        ) from None


def sample_captions(annotation: dict[str, Any], txt: bytes | None) -> list[str]:
    """Non-empty captions: the json's ``captions`` (a list, or one string), else its ``caption`` (as
    img2dataset writes it), else the ``txt`` file; none when all are missing or empty. A ``txt`` that is
    read and is not UTF-8 raises a ``ValueError`` (see :func:`text_caption`)."""
    for field in ("captions", "caption"):
        captions = annotation.get(field) or []
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list):
            continue
        found = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
        if found:
            return found
    text = text_caption(txt) if txt else ""
    return [text] if text else []


class SampleDecoder:
    """Raw sample -> :class:`DecodedSample`, or a :class:`SkippedSample` saying why not.

    Runs in loader workers; picklable. Never raises for bad data, so one corrupt sample costs one sample.
    An image larger than ``max_image_pixels`` (width x height, read from its header before anything is
    decoded) is skipped, so a decompression bomb costs nothing; ``None`` lifts vlp's limit (PIL's own,
    twice ``PIL.Image.MAX_IMAGE_PIXELS``, still applies).
    """

    def __init__(
        self,
        transform: Callable[[Image.Image], Tensor],
        require_captions: bool = True,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> None:
        self.transform = transform
        self.require_captions = require_captions
        self.max_image_pixels = max_image_pixels

    def __call__(self, sample: dict[str, Any]) -> DecodedSample | SkippedSample:
        key = str(sample.get("__key__", "?"))
        if SKIP in sample:
            return SkippedSample(key, str(sample[SKIP]))
        image_bytes = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if image_bytes is None:
            return SkippedSample(key, f"no image ({'/'.join(IMAGE_EXTENSIONS)})")
        if "json" not in sample:
            return SkippedSample(key, "missing json")
        try:
            annotation = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as exn:
            return SkippedSample(key, f"unreadable json: {exn}")
        if not isinstance(annotation, dict):
            return SkippedSample(key, "json is not an object")
        try:
            captions = sample_captions(annotation, sample.get("txt"))
        except ValueError as exn:
            return SkippedSample(key, str(exn))
        if self.require_captions and not captions:
            return SkippedSample(key, "no caption (json 'captions' / 'caption' and txt missing or empty)")
        try:
            image = decode_image(image_bytes, self.max_image_pixels)
        # PIL signals corrupt data with many exception types (OSError, SyntaxError, ValueError, ...).
        except Exception as exn:
            return SkippedSample(key, image_failure(exn))
        return DecodedSample(
            key=key,
            image=self.transform(image),
            captions=captions,
            annotation=annotation,
            orig_size=(image.height, image.width),
        )


class ImageTooLarge(ValueError):
    """An image with more pixels than the decoder's ``max_image_pixels``."""


def image_failure(exn: Exception) -> str:
    """The skip reason for an image that could not be decoded."""
    if isinstance(exn, ImageTooLarge | Image.DecompressionBombError):
        return f"image too large: {exn}"
    return f"image decode failed: {type(exn).__name__}: {exn}"


def decode_image(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Fully decode image bytes to an RGB PIL image (uint8), so corrupt data fails here.

    The size is checked against ``max_pixels`` from the header, before the pixels are decoded. Any mode
    becomes 8-bit RGB with its colours kept (:func:`to_rgb`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked just below
        image = Image.open(io.BytesIO(data))
    with image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise ImageTooLarge(
                f"{image.width}x{image.height} = {image.width * image.height} pixels, more than "
                f"max_image_pixels={max_pixels}"
            )
        image.load()
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode: 16-bit and 32-bit greyscale scaled to 8 bits (PIL's ``convert`` would
    clip them to white), transparent pixels composited over black, CMYK and palettes converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(image).astype(np.int64)
        grey8 = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey8, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def _synth_command(root: Path) -> str:
    return f"python -m vlp data synth shapes --out {root}"


class ShardDataModule(L.LightningDataModule):
    """Pre-training batches (:class:`~vlp.batch.Batch` with MLM + ITM) from webdataset shards.

    Args:
        root: dataset folder with one subfolder of ``*.tar`` shards per split and, for tasks that classify
            over categories, attributes or answers, a ``vocab.json`` listing them.
        train_split, val_split, test_split: subfolder names of the splits.
        synth: the shapes generator's settings: ``prepare_data`` generates the shapes dataset into ``root``
            when ``root`` is absent or empty, and reuses it when the generator wrote it with these settings.
            Any other folder stops the run with an error naming the setting to change: set ``synth: null``
            (``--data.init_args.synth=null``) to read your own shards, which vlp never writes into or deletes.
        batch_size: training batch size per rank; ``eval_batch_size`` for val/test (defaults to it).
        num_workers: DataLoader workers per rank. A split with fewer shards than ranks x workers is read by
            fewer workers (logged), and shards fewer than the ranks are read by every rank, each keeping
            its share of the samples: every sample is read once per epoch with any number of shards.
        image_size, patch_size, randaugment: the image transform (:class:`~vlp.datamodules.transforms.ViltTransform`);
            RandAugment applies to training only.
        max_text_len, tokenizer, mlm_probability, whole_word_masking, itm: see
            :class:`~vlp.datamodules.collate.PretrainCollator`.
        grounded_mask_probability: extra MLM masking of the words that name what is in the image
            (:mod:`vlp.datamodules.grounded_masking`), each occurrence with this probability; the words are
            ``grounded_words`` or, when that is None, ``vocab.json``'s ``categories`` and ``attributes``.
        shuffle_images: the "blind" control: training images are swapped among the batch so image and text
            are unrelated. Validation and test keep true pairs, so they measure what the run learnt.
        shuffle_buffer: training sample shuffle buffer (per worker); 0 or 1 turns sample shuffling off.
        resampled: draw training shards with replacement, endlessly (needs ``epoch_samples``).
        epoch_samples: training samples per rank and epoch, rounded up to whole batches per worker. Needed
            with ``resampled``; without it, several ranks run as many batches as the smallest rank has
            (counted from the local shards' headers, the rest logged as left out), so that every rank runs
            the same number of batches.
        seed: seeds the shard and sample shuffles and the collator. Validation and test batches (order,
            ITM negatives, MLM masks, any random choice) depend on it alone: they are the same on every pass.
        max_image_pixels: images with more pixels (width x height, read from the header) are skipped as
            too large before they are decoded (a decompression-bomb guard); ``None`` lifts the limit.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        synth: ShapesConfig | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        image_size: int = 384,
        patch_size: int = 32,
        randaugment: bool = False,
        max_text_len: int = 40,
        tokenizer: str = BUNDLED,
        mlm_probability: float = 0.15,
        whole_word_masking: bool = False,
        grounded_mask_probability: float = 0.0,
        grounded_words: list[str] | None = None,
        itm: bool = True,
        shuffle_images: bool = False,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        epoch_samples: int | None = None,
        seed: int = 0,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__()
        if max_image_pixels is not None and max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be positive or None, got {max_image_pixels}")
        if resampled and epoch_samples is None:
            raise ValueError(
                "resampled=True streams endlessly: set epoch_samples (samples per rank and epoch)"
            )
        if epoch_samples is not None and epoch_samples < 1:
            raise ValueError(f"epoch_samples must be positive, got {epoch_samples}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be non-negative, got {num_workers}")
        self.root = Path(root).expanduser()
        self.train_split = train_split
        self.val_split = val_split
        self.test_split = test_split
        self.synth = synth
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.patch_size = patch_size
        self.randaugment = randaugment
        self.max_text_len = max_text_len
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.whole_word_masking = whole_word_masking
        self.grounded_mask_probability = grounded_mask_probability
        self.grounded_words = grounded_words
        self.itm = itm
        self.shuffle_images = shuffle_images
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.epoch_samples = epoch_samples
        self.seed = seed
        self.max_image_pixels = max_image_pixels
        self.vocab: dict[str, Any] = {}
        self.num_skipped = 0
        self._train_loader: StreamLoader | None = None

    def prepare_data(self) -> None:
        """With ``synth`` set, generate the shapes dataset into ``root`` or check that it holds it (see
        ``synth``); a folder the generator did not write raises, naming the settings to change."""
        if self.synth is None:
            return
        if shapes_folder_state(self.root).kind in ("absent", "empty", "incomplete"):
            total = sum(self.synth.split_sizes().values())
            log.info("vlp: shapes dataset not found at %s, generating it (%d samples) ...", self.root, total)
        write_shapes(
            self.root, self.synth, root_setting="data.init_args.root", synth_setting="data.init_args.synth"
        )

    def setup(self, stage: str | None = None) -> None:
        """Check the dataset folder and load its ``vocab.json`` (optional: captions-only data needs none)
        into :attr:`vocab`."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset folder {self.root} does not exist; write one with `{_synth_command(self.root)}` "
                "or set `synth` to generate the shapes dataset there"
            )
        vocab_path = self.root / "vocab.json"
        if not vocab_path.is_file():
            if self._world()[0] == 0:
                log.info("vlp: %s has no vocab.json: no category, attribute or answer lists", self.root)
            self.vocab = {}
            return
        try:
            vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        except ValueError as exn:
            raise ValueError(f"{vocab_path} is not readable json: {exn}") from None
        if not isinstance(vocab, dict):
            raise ValueError(f"{vocab_path} must hold a json object of lists, got {type(vocab).__name__}")
        self.vocab = vocab

    def train_dataloader(self) -> StreamLoader:
        return self._loader(self.train_split, train=True)

    def val_dataloader(self) -> StreamLoader:
        return self._loader(self.val_split, train=False)

    def test_dataloader(self) -> StreamLoader:
        return self._loader(self.test_split, train=False)

    def predict_dataloader(self) -> Any:
        """``predict`` reads the test split, as ``test`` does, behind a plain ``DataLoader`` over its
        batches: Lightning's predict loop rebuilds a ``DataLoader`` with a batch-index sampler, which the
        stream loader does not take."""
        from torch.utils.data import DataLoader

        from vlp.datamodules.text_to_image import Batches

        return DataLoader(Batches(self._loader(self.test_split, train=False)), batch_size=None)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Tally skipped samples (main process) and, in training, record the batch as consumed.

        Lightning calls this for the batch a step is about to use, after its one-batch prefetch, so the
        recorded position is exactly what a checkpoint taken after this step has consumed.
        """
        if isinstance(batch, Batch):
            self.num_skipped += batch.num_skipped
            trainer = self.trainer
            if self._train_loader is not None and trainer is not None and trainer.training:
                self._train_loader.consumed(batch)
        return batch

    def shards(self, split: str) -> list[str]:
        """Sorted shard paths of ``split``; a clear error when there are none."""
        folder = self.root / split
        urls = sorted(str(p) for p in folder.glob("*") if p.is_file() and p.name.endswith(SHARD_SUFFIXES))
        if not urls:
            raise FileNotFoundError(
                f"no shards (*.tar) in {folder}; write a dataset with `{_synth_command(self.root)}` "
                f"or point root at a folder with a {split!r} split of webdataset shards"
            )
        return urls

    def _world(self) -> tuple[int, int]:
        """``(rank, world size)`` of the data-parallel group (``(0, 1)`` outside a trainer)."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _sharded_model(self) -> bool:
        """Whether the trainer's strategy shards the model (FSDP): every forward pass is then a collective,
        so evaluation too must run the same number of batches on every rank."""
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

        strategy = None if self.trainer is None else self.trainer.strategy
        return isinstance(strategy, FSDPStrategy | ModelParallelStrategy | DeepSpeedStrategy)

    def _worker_batches(self) -> int | None:
        """Per-worker batches per epoch from ``epoch_samples`` (per rank), rounded up to whole batches."""
        if self.epoch_samples is None:
            return None
        workers = max(1, self.num_workers)
        return math.ceil(self.epoch_samples / (workers * self.batch_size))

    def stream(self, split: str, train: bool) -> ShardStream:
        """The split's :class:`~vlp.datamodules.stream.ShardStream` for this rank.

        With several ranks and no resampling, the local shards' samples are counted so that every rank
        runs the same number of batches: in training, and in evaluation when the model is sharded (each
        forward pass is a collective). Otherwise evaluation reads every sample, and a rank may run a batch
        more than another (harmless under DDP).
        """
        urls = self.shards(split)
        rank, world_size = self._world()
        resampled = train and self.resampled
        counts = None
        if world_size > 1 and not resampled and (train or self._sharded_model()):
            counts = local_sample_counts(urls)
        transform = ViltTransform(self.image_size, self.patch_size, randaugment=train and self.randaugment)
        return ShardStream(
            urls,
            decode=self.decoder(transform),
            collate=self.collator(train),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            shuffle_buffer=self.shuffle_buffer,
            resampled=resampled,
            worker_batches=self._worker_batches() if train else None,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            sample_counts=counts,
        )

    def decoder(self, transform: Callable[[Image.Image], Tensor]) -> Callable[[dict[str, Any]], Any]:
        """Raw sample -> what the collator takes, or a skip marker (task data modules decode QA, pairs)."""
        return SampleDecoder(transform, max_image_pixels=self.max_image_pixels)

    def collator(self, train: bool) -> Callable[..., Batch]:
        return PretrainCollator(
            tokenizer=self.tokenizer,
            max_text_len=self.max_text_len,
            mlm_probability=self.mlm_probability,
            whole_word_masking=self.whole_word_masking,
            itm=self.itm,
            shuffle_images=train and self.shuffle_images,
            seed=self.seed,
            grounded_words=self._grounded_words(),
            grounded_mask_probability=self.grounded_mask_probability,
        )

    def _grounded_words(self) -> list[str]:
        """The words grounded masking picks from: ``grounded_words``, else vocab.json's categories and attributes."""
        if self.grounded_mask_probability == 0:
            return []
        if self.grounded_words is not None:
            return list(self.grounded_words)
        words = [*self.vocab.get("categories", []), *self.vocab.get("attributes", [])]
        if not words:
            raise ValueError(
                f"grounded_mask_probability={self.grounded_mask_probability} but {self.root / 'vocab.json'} has "
                "no 'categories' or 'attributes' to mask: list the words in grounded_words"
            )
        return words

    def _loader(self, split: str, train: bool) -> StreamLoader:
        """The split's loader; evaluation loaders (``train=False``) repeat the same batches every pass."""
        stream = self.stream(split, train)
        workers = self._reader_workers(split, stream)
        loader = StreamLoader(
            stream,
            num_workers=workers,
            equalise_ranks=stream.sample_counts is not None,
            repeat=not train,
        )
        if train:
            self._train_loader = loader
        return loader

    def _reader_workers(self, split: str, stream: ShardStream) -> int:
        """Loader workers for ``split``: ``num_workers``, or fewer when its shards cannot occupy them all
        (logged once, by rank 0, with how shards are shared when they are fewer than the ranks)."""
        readers = max(1, self.num_workers)  # 0 workers: the main process reads
        workers = stream.workers_for(readers)
        shared = 0 if stream.resampled else shared_shards(len(stream.urls), stream.world_size, workers)
        if (workers < readers or shared) and stream.rank == 0:
            fewer = f": reading it with {workers} worker(s) per rank" if workers < readers else ""
            sharing = (
                f"; {shared} shard(s) are read by every rank, each keeping 1 sample in {stream.world_size}"
                if shared
                else ""
            )
            log.info(
                "vlp: split %r of %s has %d shard(s) for %d rank(s) x %d reader(s)%s%s",
                split,
                self.root,
                len(stream.urls),
                stream.world_size,
                readers,
                fewer,
                sharing,
            )
        return 0 if self.num_workers == 0 else workers
