"""Webdataset shards as a LightningDataModule for MLM + ITM pre-training.

A dataset folder holds one subfolder of ``*.tar`` shards per split and a ``vocab.json``. Every split is
read as a :class:`~vlp.datamodules.stream.ShardStream` (webdataset's tar reader; shard shuffle, split by
rank and by worker, sample shuffle, decode, collation with
:class:`~vlp.datamodules.collate.PretrainCollator`) behind a :class:`~vlp.datamodules.stream.StreamLoader`.
All randomness is a function of ``(seed, epoch, rank, worker, position)``: without resampling one epoch
covers every sample exactly once across ranks and workers, and a run resumed from a checkpoint continues
with exactly the batches an uninterrupted run would have seen (the position is saved by Lightning's
stateful-loader hooks).

Decoding runs in the loader workers and never raises for a bad sample: a corrupt image, a missing or
unreadable json, or a sample without captions becomes a :class:`~vlp.datamodules.collate.SkippedSample`
that the collator counts into ``Batch.num_skipped``; the DataModule keeps the running total in
:attr:`ShardDataModule.num_skipped` (tallied in ``on_before_batch_transfer``, in the main process). A
shard that cannot be read is reported by name and the stream goes on with the next one.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from PIL import Image
from torch import Tensor

from vlp.datamodules.collate import DecodedSample, PretrainCollator, SkippedSample
from vlp.datamodules.schema import Batch
from vlp.datamodules.stream import ShardStream, StreamLoader, local_sample_counts
from vlp.datamodules.synth.shapes import ShapesConfig, shapes_ready, write_shapes
from vlp.datamodules.transforms import ViltTransform
from vlp.tokenizers import BUNDLED

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def shard_error_handler(exn: Exception) -> bool:
    """webdataset handler: report a shard that cannot be opened or read, naming it, and go on.

    webdataset appends the shard's URL to the exception's ``args`` when opening or expanding it fails.
    """
    shard = next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(SHARD_SUFFIXES)), None)
    log.warning(
        "vlp: cannot read shard %s: %s: %s; going on with the next shard",
        shard or "(unknown)",
        type(exn).__name__,
        exn.args[0] if exn.args else exn,
    )
    return True


def sample_captions(annotation: dict[str, Any], txt: bytes | None) -> list[str]:
    """Non-empty captions from the json, else the img2dataset ``txt`` caption, else none."""
    captions = annotation.get("captions") or []
    if isinstance(captions, str):
        captions = [captions]
    found = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    if not found and txt:
        text = txt.decode("utf-8", errors="replace").strip()
        found = [text] if text else []
    return found


class SampleDecoder:
    """Raw webdataset sample -> :class:`DecodedSample`, or a :class:`SkippedSample` saying why not.

    Runs in loader workers; picklable. Never raises for bad data, so one corrupt sample costs one sample.
    """

    def __init__(self, transform: Callable[[Image.Image], Tensor], require_captions: bool = True) -> None:
        self.transform = transform
        self.require_captions = require_captions

    def __call__(self, sample: dict[str, Any]) -> DecodedSample | SkippedSample:
        key = str(sample.get("__key__", "?"))
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
        captions = sample_captions(annotation, sample.get("txt"))
        if self.require_captions and not captions:
            return SkippedSample(key, "no captions")
        try:
            image = decode_image(image_bytes)
        # PIL signals corrupt data with many exception types (OSError, SyntaxError, ValueError, ...).
        except Exception as exn:
            return SkippedSample(key, f"image decode failed: {type(exn).__name__}: {exn}")
        return DecodedSample(
            key=key,
            image=self.transform(image),
            captions=captions,
            annotation=annotation,
            orig_size=(image.height, image.width),
        )


def decode_image(data: bytes) -> Image.Image:
    """Fully decode image bytes to an RGB PIL image (uint8), so corrupt data fails here."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def _synth_command(root: Path) -> str:
    return f"python -m vlp data synth shapes --out {root}"


class ShardDataModule(L.LightningDataModule):
    """Pre-training batches (:class:`~vlp.datamodules.schema.Batch` with MLM + ITM) from webdataset shards.

    Args:
        root: dataset folder with one subfolder of ``*.tar`` shards per split and a ``vocab.json``.
        train_split, val_split, test_split: subfolder names of the splits.
        synth: when set, ``prepare_data`` generates the shapes dataset into ``root`` unless it is there.
        batch_size: training batch size per rank; ``eval_batch_size`` for val/test (defaults to it).
        num_workers: DataLoader workers; without resampling each needs at least one shard of its own.
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
        seed: seeds the shard and sample shuffles and the collator.
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
    ) -> None:
        super().__init__()
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
        self.vocab: dict[str, Any] = {}
        self.num_skipped = 0
        self._train_loader: StreamLoader | None = None

    def prepare_data(self) -> None:
        """Generate the shapes dataset when ``synth`` is set and ``root`` does not hold it yet."""
        if self.synth is None or shapes_ready(self.root):
            return
        total = sum(self.synth.split_sizes().values())
        log.info("vlp: shapes dataset not found at %s, generating it (%d samples) ...", self.root, total)
        write_shapes(self.root, self.synth)

    def setup(self, stage: str | None = None) -> None:
        """Check the dataset folder and load ``vocab.json`` into :attr:`vocab`."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset folder {self.root} does not exist; write one with `{_synth_command(self.root)}` "
                "or set `synth` to generate the shapes dataset there"
            )
        vocab_path = self.root / "vocab.json"
        if not vocab_path.is_file():
            raise FileNotFoundError(
                f"{vocab_path} not found: a dataset folder carries a vocab.json beside its split folders "
                f"(`{_synth_command(self.root)}` writes a complete one; {{}} will do for captions-only data)"
            )
        self.vocab = json.loads(vocab_path.read_text(encoding="utf-8"))

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

    def _check_shard_count(self, split: str, num_shards: int, train: bool) -> None:
        """Without resampling, every rank's every worker must own a shard, or samples would be missed.

        (With fewer shards than readers, a plain webdataset pipeline leaves some workers empty and, across
        ranks, can hang in the first collective; here it is an error before any work starts.)
        """
        if train and self.resampled:
            return
        _, world_size = self._world()
        workers = max(1, self.num_workers)
        if num_shards // world_size < workers:
            raise ValueError(
                f"split {split!r} in {self.root} has {num_shards} shard(s) for {world_size} rank(s) x "
                f"{workers} loader worker(s); every worker reads whole shards, so it needs at least "
                f"{world_size * workers} shards: write more, smaller shards or set num_workers <= "
                f"{max(num_shards // world_size, 0)}"
            )

    def _worker_batches(self) -> int | None:
        """Per-worker batches per epoch from ``epoch_samples`` (per rank), rounded up to whole batches."""
        if self.epoch_samples is None:
            return None
        workers = max(1, self.num_workers)
        return math.ceil(self.epoch_samples / (workers * self.batch_size))

    def stream(self, split: str, train: bool) -> ShardStream:
        """The split's :class:`~vlp.datamodules.stream.ShardStream` for this rank."""
        urls = self.shards(split)
        self._check_shard_count(split, len(urls), train)
        rank, world_size = self._world()
        resampled = train and self.resampled
        counts = local_sample_counts(urls) if train and world_size > 1 and not resampled else None
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
            shard_handler=shard_error_handler,
            sample_counts=counts,
        )

    def decoder(self, transform: Callable[[Image.Image], Tensor]) -> Callable[[dict[str, Any]], Any]:
        """Raw sample -> what the collator takes, or a skip marker (task data modules decode QA, pairs)."""
        return SampleDecoder(transform)

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
        stream = self.stream(split, train)
        loader = StreamLoader(
            stream, num_workers=self.num_workers, equalise_ranks=stream.sample_counts is not None
        )
        if train:
            self._train_loader = loader
        return loader
