"""``python -m vlp bench data``: what vlp's data pipeline costs on top of decoding the images it reads.

The benchmark writes ``images`` synthetic JPEGs into a temporary folder (smooth random colour fields with
noise, so they compress like photographs; the shorter side ``jpeg_size`` px, the longer side drawn up to
ViLT's cap of 1333/800 times it, landscape or portrait; JPEG quality 90) with one caption each, listed in a
``pairs.tsv``. ``data convert web``'s writer turns them into webdataset shards once (the JPEG bytes are
stored as they are), and every loader below reads those shards. In the same process, with the same
``workers``, each round times:

1. **Training loader.** vlp's :class:`~vlp.datamodules.shards.ShardDataModule` train loader as a
   pre-training recipe builds it: tar reading, shard and sample shuffle, decode
   (:class:`~vlp.datamodules.decode.SampleDecoder`), :class:`~vlp.datamodules.transforms.ViltTransform`
   (``size`` / ``patch_size``, no RandAugment) and
   :class:`~vlp.datamodules.collate.PretrainCollator` (tokenisation, MLM masking, ITM pairing, padding),
   ``workers`` DataLoader workers, batches of ``batch_size``: the zero-padded ``uint8`` batches it hands to
   the device transfer, as the bare loops below hand theirs. A second row times the same loader with each
   batch then normalised into the model's float32 pixels in the main process
   (:func:`~vlp.datamodules.normalise.normalise_batch`, the data module's ``on_after_batch_transfer``): what
   a trainer's step is given when the model runs on the CPU (on a GPU that work runs on the GPU);
2. **Bare loops** over the same shards with a plain ``torch.utils.data.DataLoader`` of the same workers and
   batch size: each worker reads its share of the shards with :mod:`tarfile`, decodes each JPEG and
   resizes it (bicubic, antialiased) to the size vlp's transform gives it, into zero-padded ``uint8``
   batches; once with PIL (open, RGB, ``resize``) and once with torchvision (``decode_jpeg``, ``resize``
   on the tensor: what vlp's decoder and transform run). The ratio is against the faster of the two.
3. **Converter.** :func:`~vlp.datamodules.convert.writer.write_shards` of a
   :class:`~vlp.datamodules.convert.web.WebConverter` over the folder and ``pairs.tsv`` into a fresh folder
   (``max(1, workers)`` processes: each image fully decoded as a check, shards and manifest written),
   against ``shutil.copyfile`` of the same files into a fresh folder (``max(1, workers)`` threads).

A loader's images/s is taken over each pass (one epoch of every image) after its first ``warmup_batches``
batches (worker start, the shuffle buffer's fill, the tokenizer's load): the images of the later batches
over the time from the warm-up's last batch to the pass's last batch; the pass's wall time is reported
too. Every loader must yield every image once per pass (none skipped), else the run stops. The first
``warmup`` rounds are not recorded; the order of the loaders, and of the writers, alternates from round to
round. The table gives medians; the last three lines printed are the ratios ``loader images/s ratio vlp
normalised on the CPU / bare: R``, ``converter images/s ratio write_shards / copy: R`` and ``loader
images/s ratio vlp / bare (<the faster bare loop>): R (goal >= 0.9)``.
``--json`` also writes every figure.
"""

from __future__ import annotations

import functools
import io
import json
import math
import shutil
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlp.bench.command import command_line, cpu_name, parse_options, publish
from vlp.datamodules.transforms import long_side_cap, resized_shape

LOADERS = ("vlp", "vlp-normalised-on-cpu", "bare-pil", "bare-torchvision")
BARE = ("bare-pil", "bare-torchvision")
WRITERS = ("write_shards", "copy")
JPEG_QUALITY = 90
SPLIT = "train"
CAPTION_WORDS = (
    "a man woman child dog cat bird horse bicycle car bus train boat plane table chair bench street "
    "park beach field kitchen window door tree flower red blue green yellow white black small large "
    "old young sitting standing riding holding walking next to near on under behind with of the"
)
"""Words the synthetic captions are drawn from, space-separated."""
GOAL = 0.9


@dataclass
class DataLoaderConfig:
    """What to measure. The defaults are ViLT-B/32's image sizes on 2,000 JPEGs whose shorter side is
    already 384 px (``--jpeg_size 480`` gives COCO-sized ones, which the transform shrinks).

    Args:
        images: synthetic JPEGs written and read by every loader and writer.
        size: the transform's ``image_size`` (ViLT's shorter side); the bare loops resize to the same sizes.
        patch_size: the transform's patch size (sides are floored to multiples of it).
        jpeg_size: the shorter side of the written JPEGs (``None``: ``size``); the longer side is drawn
            from ``jpeg_size`` to ViLT's cap, 1333/800 times it.
        workers: DataLoader workers of every loader (0: the main process reads); the converter's
            processes and the copy's threads are ``max(1, workers)``.
        batch_size: images per batch of every loader.
        samples_per_shard: images per shard (the shards must be at least ``workers``, so that every
            worker reads).
        shuffle_buffer: vlp's training sample shuffle buffer per worker (the data module's default).
        repeats: recorded rounds; warmup: rounds run before them and not recorded.
        warmup_batches: the first batches of each loader pass, not timed.
        seed: the images' and captions' generator.
    """

    images: int = 2000
    size: int = 384
    patch_size: int = 32
    jpeg_size: int | None = None
    workers: int = 2
    batch_size: int = 32
    samples_per_shard: int = 250
    shuffle_buffer: int = 1000
    repeats: int = 3
    warmup: int = 1
    warmup_batches: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.images, self.batch_size, self.samples_per_shard, self.repeats) < 1:
            raise ValueError(
                "images, batch_size, samples_per_shard and repeats must be >= 1, got "
                f"{self.images}, {self.batch_size}, {self.samples_per_shard}, {self.repeats}"
            )
        if min(self.workers, self.warmup, self.warmup_batches, self.shuffle_buffer, self.seed) < 0:
            raise ValueError("workers, warmup, warmup_batches, shuffle_buffer and seed must be >= 0")
        if self.size < self.patch_size or self.patch_size < 1:
            raise ValueError(f"size {self.size} must be at least one patch (patch_size {self.patch_size})")
        if self.jpeg_size is not None and self.jpeg_size < 8:
            raise ValueError(f"jpeg_size must be at least 8 px, got {self.jpeg_size}")
        if self.shards < max(1, self.workers):
            raise ValueError(
                f"{self.images} images in shards of {self.samples_per_shard} make {self.shards} shard(s), "
                f"fewer than the {self.workers} workers: give a smaller --samples_per_shard or fewer --workers"
            )
        if math.ceil(self.images / self.batch_size) <= self.warmup_batches:
            raise ValueError(
                f"{self.images} images make at most {math.ceil(self.images / self.batch_size)} batches of "
                f"{self.batch_size}, none left to time after --warmup_batches {self.warmup_batches}: give "
                "more --images, a smaller --batch_size or fewer --warmup_batches"
            )

    @property
    def shards(self) -> int:
        return math.ceil(self.images / self.samples_per_shard)

    @property
    def source_size(self) -> int:
        """The shorter side of the written JPEGs."""
        return self.size if self.jpeg_size is None else self.jpeg_size


@dataclass
class Pass:
    """One loader pass: images yielded, the images and seconds after the warm-up batches, the wall time."""

    images: int
    timed_images: int
    timed_seconds: float
    wall_seconds: float

    @property
    def rate(self) -> float:
        return self.timed_images / self.timed_seconds


@dataclass
class Timings:
    """Every recorded round: a pass per loader and the seconds of each writer."""

    loaders: dict[str, list[Pass]] = field(default_factory=lambda: {name: [] for name in LOADERS})
    writers: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in WRITERS})


# ---------------------------------------------------------------------------------------------- the images


def synthetic_jpeg(rng: np.random.Generator, short: int) -> bytes:
    """A JPEG of a smooth random colour field with noise: shorter side ``short``, the longer side drawn up
    to ViLT's cap, landscape two times in three."""
    long = int(rng.integers(short, max(short, long_side_cap(short)) + 1))
    height, width = (short, long) if rng.random() < 2 / 3 else (long, short)
    coarse = rng.integers(0, 256, (max(2, height // 48), max(2, width // 48), 3), dtype=np.uint8)
    field_ = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    pixels = np.clip(field_.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def caption(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(CAPTION_WORDS.split(), size=int(rng.integers(8, 17)))).capitalize() + "."


def write_images(config: DataLoaderConfig, raw: Path) -> list[Path]:
    """The JPEGs in ``raw/images`` and ``raw/pairs.tsv`` listing them with a caption each."""
    rng = np.random.default_rng(config.seed)
    (raw / "images").mkdir(parents=True)
    paths, lines = [], []
    for index in range(config.images):
        path = raw / "images" / f"{index:06d}.jpg"
        path.write_bytes(synthetic_jpeg(rng, config.source_size))
        paths.append(path)
        lines.append(f"images/{path.name}\t{caption(rng)}\n")
    (raw / "pairs.tsv").write_text("".join(lines), encoding="utf-8")
    return paths


# ---------------------------------------------------------------------------------------------- the writers


def convert(config: DataLoaderConfig, raw: Path, out: Path) -> int:
    """``write_shards`` of the web converter over the pairs into ``out``; the number of samples written,
    which must be every image."""
    from vlp.datamodules.convert.web import WebConverter
    from vlp.datamodules.convert.writer import write_shards

    manifest = write_shards(
        WebConverter(raw, pairs=raw / "pairs.tsv", split=SPLIT),
        out,
        workers=max(1, config.workers),
        samples_per_shard=config.samples_per_shard,
        progress=False,
    )
    written = manifest.splits[SPLIT].samples
    if written != config.images:
        raise RuntimeError(
            f"bench data: the converter wrote {written} of {config.images} images into {out}: "
            f"dropped {manifest.dropped[:3]}"
        )
    return written


def copy_files(paths: Sequence[Path], out: Path, threads: int) -> None:
    """``shutil.copyfile`` of every file into ``out`` with ``threads`` threads (1: in this thread)."""
    out.mkdir(parents=True)
    if threads == 1:
        for path in paths:
            shutil.copyfile(path, out / path.name)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda path: shutil.copyfile(path, out / path.name), paths))


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- the loaders


class Normalised:
    """The batches of a loader as the model is given them on the CPU: :func:`normalise_batch` applied,
    as the data module's ``on_after_batch_transfer`` applies it (inside the timed loop)."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        from vlp.datamodules.normalise import normalise_batch

        for batch in self.loader:
            yield normalise_batch(batch)


def vlp_loader(config: DataLoaderConfig, root: Path) -> Iterable[Any]:
    """The train loader of a pre-training ``ShardDataModule`` over ``root``: uint8 image batches."""
    from vlp.datamodules.collate import PretrainCollator
    from vlp.datamodules.decode import SampleDecoder
    from vlp.datamodules.shards import ShardDataModule
    from vlp.datamodules.transforms import ViltTransform

    data = ShardDataModule(
        root=str(root),
        transform=ViltTransform(config.size, config.patch_size),
        decoder=SampleDecoder(),
        collator=PretrainCollator(),
        train_split=SPLIT,
        batch_size=config.batch_size,
        num_workers=config.workers,
        shuffle_buffer=config.shuffle_buffer,
        seed=config.seed,
    )
    data.setup("fit")
    return data.train_dataloader()


def pil_image(data: bytes, size: int, patch_size: int) -> np.ndarray:
    """``uint8 [3, h, w]`` (a view of the image's pixels): the JPEG decoded with PIL and resized (bicubic)
    to vlp's size for it."""
    image = Image.open(io.BytesIO(data))
    if image.mode != "RGB":
        image = image.convert("RGB")
    height, width = resized_shape(image.height, image.width, size, patch_size)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized).transpose(2, 0, 1)


def torchvision_image(data: bytes, size: int, patch_size: int) -> np.ndarray:
    """``uint8 [3, h, w]``: the JPEG decoded with torchvision and resized (bicubic, antialiased) to vlp's
    size for it."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    shape = resized_shape(image.shape[1], image.shape[2], size, patch_size)
    return F.resize(image, list(shape), interpolation=InterpolationMode.BICUBIC, antialias=True).numpy()


DECODERS: dict[str, Callable[[bytes, int, int], np.ndarray]] = {
    "bare-pil": pil_image,
    "bare-torchvision": torchvision_image,
}


class BareJpegs(IterableDataset):
    """The JPEGs of the shards, decoded and resized; DataLoader worker ``w`` of ``n`` reads shards
    ``w, w + n, ...``, as vlp's stream shares them out."""

    def __init__(self, urls: Sequence[str], decoder: str, size: int, patch_size: int) -> None:
        super().__init__()
        self.urls = list(urls)
        self.decoder = decoder
        self.size = size
        self.patch_size = patch_size

    def __iter__(self) -> Iterator[np.ndarray]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        decode = DECODERS[self.decoder]
        for url in self.urls[worker::workers]:
            with tarfile.open(url, "r|") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".jpg"):
                        stream = tar.extractfile(member)
                        assert stream is not None  # a regular member always has data
                        yield decode(stream.read(), self.size, self.patch_size)


def pad_uint8(images: list[np.ndarray]) -> Tensor:
    """``uint8 [B, 3, H, W]``: the ``[3, h, w]`` images zero-padded to the batch's largest sides, top-left
    aligned; each image's pixels are copied once, into the batch."""
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    batch = np.zeros((len(images), 3, height, width), dtype=np.uint8)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[1], : image.shape[2]] = image
    return torch.from_numpy(batch)


def bare_loader(config: DataLoaderConfig, urls: Sequence[str], decoder: str) -> DataLoader:
    return DataLoader(
        BareJpegs(urls, decoder, config.size, config.patch_size),
        batch_size=config.batch_size,
        num_workers=config.workers,
        collate_fn=pad_uint8,
    )


def batch_images(batch: Any) -> int:
    """Images in a batch: a vlp ``Batch`` (none may be skipped) or a bare ``uint8`` tensor."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if batch.num_skipped:
        raise RuntimeError(f"bench data: vlp's loader skipped samples {batch.skipped_keys[:3]}")
    return len(batch)


def time_pass(loader: Iterable[Any], warmup_batches: int) -> Pass:
    """One pass over ``loader``: the images after its first ``warmup_batches`` batches, timed from the
    last warm-up batch (or the start) to the last batch."""
    start = time.perf_counter()
    timed_from = start
    last = start
    images = timed_images = 0
    for index, batch in enumerate(loader):
        count = batch_images(batch)
        last = time.perf_counter()
        images += count
        if index >= warmup_batches:
            timed_images += count
        elif index == warmup_batches - 1:
            timed_from = last
    wall = time.perf_counter() - start
    return Pass(images, timed_images, last - timed_from, wall)


# ---------------------------------------------------------------------------------------------- the rounds


def measure(config: DataLoaderConfig, work: Path) -> tuple[Timings, dict[str, Any]]:
    """Write the images and the shards, then run every round; the recorded timings and what was read."""
    raw = work / "raw"
    paths = write_images(config, raw)
    shards_root = work / "shards"
    convert(config, raw, shards_root)
    urls = sorted(str(p) for p in (shards_root / SPLIT).glob("*.tar"))
    loaders: dict[str, Iterable[Any]] = {
        "vlp": vlp_loader(config, shards_root),
        "vlp-normalised-on-cpu": Normalised(vlp_loader(config, shards_root)),
    }
    loaders.update({name: bare_loader(config, urls, name) for name in BARE})
    threads = max(1, config.workers)
    timings = Timings()
    for round_ in range(config.warmup + config.repeats):
        recorded = round_ >= config.warmup
        order = LOADERS if round_ % 2 == 0 else LOADERS[::-1]
        for name in order:
            done = time_pass(loaders[name], config.warmup_batches)
            if done.images != config.images:
                raise RuntimeError(
                    f"bench data: the {name} loader yielded {done.images} of {config.images} images in a pass"
                )
            if recorded:
                timings.loaders[name].append(done)
        writers = {
            "write_shards": functools.partial(convert, config, raw, work / f"convert_{round_}"),
            "copy": functools.partial(copy_files, paths, work / f"copy_{round_}", threads),
        }
        for name in WRITERS if round_ % 2 == 0 else WRITERS[::-1]:
            seconds = timed(writers[name])
            if recorded:
                timings.writers[name].append(seconds)
        shutil.rmtree(work / f"convert_{round_}")
        shutil.rmtree(work / f"copy_{round_}")
    files = {"jpeg_bytes": sum(path.stat().st_size for path in paths), "shards": len(urls)}
    return timings, files


def record(config: DataLoaderConfig, timings: Timings, files: dict[str, Any], command: str) -> dict[str, Any]:
    """Every figure of the run, as written by ``--json``."""
    import PIL
    import torchvision

    rates = {name: [p.rate for p in passes] for name, passes in timings.loaders.items()}
    loader_medians = {name: statistics.median(values) for name, values in rates.items()}
    writer_rates = {name: [config.images / s for s in values] for name, values in timings.writers.items()}
    writer_medians = {name: statistics.median(values) for name, values in writer_rates.items()}
    fastest_bare = max(BARE, key=lambda name: loader_medians[name])
    return {
        "command": command,
        "config": asdict(config),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "cpu": cpu_name(),
        "files": files,
        "images_per_pass": {name: [p.images for p in passes] for name, passes in timings.loaders.items()},
        "timed_images": {name: [p.timed_images for p in passes] for name, passes in timings.loaders.items()},
        "loader_images_per_second": rates,
        "loader_median_images_per_second": loader_medians,
        "loader_pass_seconds": {
            name: [p.wall_seconds for p in passes] for name, passes in timings.loaders.items()
        },
        "writer_seconds": timings.writers,
        "writer_images_per_second": writer_rates,
        "writer_median_images_per_second": writer_medians,
        "fastest_bare": fastest_bare,
        "ratio_vlp_over_bare": loader_medians["vlp"] / loader_medians[fastest_bare],
        "ratio_vlp_normalised_on_cpu_over_bare": loader_medians["vlp-normalised-on-cpu"]
        / loader_medians[fastest_bare],
        "ratio_write_shards_over_copy": writer_medians["write_shards"] / writer_medians["copy"],
    }


def markdown(config: DataLoaderConfig, result: dict[str, Any]) -> str:
    """A section for benchmarks/RESULTS.md; its last three lines are the loader's ratio with the CPU normalisation,
    the converter's and the loader's."""
    short = config.source_size
    names = {
        "vlp": f"vlp `ShardDataModule` train loader: decode, `ViltTransform({config.size}, "
        f"{config.patch_size})`, `PretrainCollator` (tokenise, MLM 15 %, ITM, pad), padded uint8 batches",
        "vlp-normalised-on-cpu": "the same vlp loader, each batch then normalised to float32 in the main "
        "process (`normalise_batch`: the model's input on a CPU)",
        "bare-pil": "bare: tarfile + PIL open / RGB / bicubic resize, padded uint8 batches",
        "bare-torchvision": "bare: tarfile + torchvision `decode_jpeg` / bicubic resize, padded uint8 batches",
        "write_shards": f"`write_shards(WebConverter(pairs=TSV), workers={max(1, config.workers)})`",
        "copy": f"`shutil.copyfile` of the same files, {max(1, config.workers)} thread(s)",
    }
    workers = (
        f"{config.workers} DataLoader worker(s)"
        if config.workers
        else "No DataLoader workers (the main process reads)"
    )
    lines = [
        f"`{result['command']}`",
        "",
        f"{config.images} synthetic JPEGs (random smooth colour fields with noise, quality {JPEG_QUALITY}; "
        f"shorter side {short} px, longer side {short}-{long_side_cap(short)} px; "
        f"{result['files']['jpeg_bytes'] / 1e6:.1f} MB) with a caption each, in {result['files']['shards']} "
        f"webdataset shards written by `data convert web`'s writer. {workers}, batch "
        f"{config.batch_size}, vlp's shuffle buffer {config.shuffle_buffer}; images/s of each pass (an epoch) "
        f"after its first {config.warmup_batches} batches, median of {config.repeats} rounds after "
        f"{config.warmup} warm-up round(s), the order alternating; torch {result['torch']}, "
        f"torchvision {result['torchvision']}, Pillow {result['pillow']}, {result['cpu']}.",
        "",
        "| loader | images/s (median) | each round | pass wall s (median) | images per pass |",
        "|---|---|---|---|---|",
    ]
    for name in LOADERS:
        each = ", ".join(f"{v:.1f}" for v in result["loader_images_per_second"][name])
        wall = statistics.median(result["loader_pass_seconds"][name])
        lines.append(
            f"| {names[name]} | {result['loader_median_images_per_second'][name]:.1f} | {each} | "
            f"{wall:.2f} | {result['images_per_pass'][name][0]} |"
        )
    lines += ["", "| writer | images/s (median) | each round | wall s (median) |", "|---|---|---|---|"]
    for name in WRITERS:
        each = ", ".join(f"{v:.1f}" for v in result["writer_images_per_second"][name])
        wall = statistics.median(result["writer_seconds"][name])
        lines.append(
            f"| {names[name]} | {result['writer_median_images_per_second'][name]:.1f} | {each} | {wall:.2f} |"
        )
    lines += [
        "",
        "loader images/s ratio vlp normalised on the CPU / bare "
        f"({result['fastest_bare']}): {result['ratio_vlp_normalised_on_cpu_over_bare']:.2f}",
        f"converter images/s ratio write_shards / copy: {result['ratio_write_shards_over_copy']:.2f}",
        f"loader images/s ratio vlp / bare ({result['fastest_bare']}): {result['ratio_vlp_over_bare']:.2f} "
        f"(goal >= {GOAL})",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    """Write the images and shards, time the loaders and writers, print the table (and write the JSON)."""
    extra = {"--json": {"type": str | None, "default": None, "help": "also write every figure here as JSON"}}
    config, args = parse_options("data", DataLoaderConfig, __doc__, argv, extra=extra)
    work = Path(tempfile.mkdtemp(prefix="vlp-bench-data-"))
    try:
        timings, files = measure(config, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = record(config, timings, files, command_line("data", list(argv)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    publish(markdown(config, result), args.out)
