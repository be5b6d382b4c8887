from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from shard_helpers import data_module, good_sample, keyed_shards, png_bytes, write_dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from vlp.batch import Batch
from vlp.datamodules.decode import DecodedSample, SampleDecoder, SkippedSample
from vlp.datamodules.shards import ShardDataModule
from vlp.datamodules.synth.scenes import ShapesConfig
from vlp.datamodules.transforms import VILT_MEAN, VILT_STD, ViltTransform, resized_shape

SMALL = {"batch_size": 4, "shuffle_buffer": 8}


def epoch_keys(loader: Any, datamodule: ShardDataModule | None = None) -> list[str]:
    keys: list[str] = []
    for batch in loader:
        if datamodule is not None:
            batch = datamodule.on_before_batch_transfer(batch, 0)
        keys += batch.keys + batch.skipped_keys
    return keys


@pytest.fixture
def four_shards(tmp_path: Path) -> Path:
    write_dataset(tmp_path, {"train": keyed_shards("t", 4, 5), "val": keyed_shards("v", 4, 3)})
    return tmp_path


def datamodule(root: Path, **kwargs: Any) -> ShardDataModule:
    dm = data_module(root, **{**SMALL, **kwargs})
    dm.setup("fit")
    return dm


def test_batches_are_pretraining_batches(four_shards: Path) -> None:
    dm = datamodule(four_shards, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, Batch) and len(batch) == 4
    assert batch.pixels.shape == (4, 3, 32, 32) and batch.pixel_mask.all()
    assert batch.itm_labels is not None and batch.mlm_labels is not None
    assert dm.vocab == {"categories": ["square"]}


def test_two_workers_see_every_sample_exactly_once_per_epoch(four_shards: Path) -> None:
    dm = datamodule(four_shards, num_workers=2)
    expected = {f"t{s}-{i}" for s in range(4) for i in range(5)}
    loader = dm.train_dataloader()
    first, second = epoch_keys(loader), epoch_keys(loader)
    for keys in (first, second):
        assert Counter(keys) == Counter(expected)
    assert first != second  # the shuffles advance with the epoch
    val_keys = epoch_keys(dm.val_dataloader())
    assert Counter(val_keys) == Counter(f"v{s}-{i}" for s in range(4) for i in range(3))


def worker_children() -> list[int]:
    """Loader workers (``pt_data_worker``) whose parent is this process."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if name == "pt_data_worker" and int(rest[1]) == os.getpid():
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_are_not_forks_of_the_training_process(four_shards: Path) -> None:
    """A fork would share the training process's heap copy-on-write and end up with a private copy of it
    (vlp.datamodules.loader); the fork server's workers are its children, not this process's."""
    loader = datamodule(four_shards, num_workers=2).train_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    batches = iter(loader)
    next(batches)
    assert worker_children() == []
    del batches


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (a process and every process it started)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
def test_workers_end_when_the_training_process_is_killed_outright(four_shards: Path) -> None:
    """SIGKILL leaves no clean-up to the training process: its fork server's workers end by themselves."""
    marker = f"VLP_TEST_WORKERS_{os.getpid()}"
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from shard_helpers import data_module; "
        "dm = data_module(sys.argv[2], num_workers=2, batch_size=4); dm.setup('fit'); "
        "batches = iter(dm.train_dataloader()); next(batches); print('ready', flush=True); time.sleep(600)"
    )
    helpers = str(Path(__file__).parent)
    env = {**os.environ, marker: "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", script, helpers, str(four_shards)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert len(marked_processes(marker)) >= 4  # the process, its fork server, two workers
        child.kill()
        child.wait()
        deadline = time.monotonic() + 30
        while marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marked_processes(marker) == []
    finally:
        child.kill()
        for pid in marked_processes(marker):
            os.kill(pid, signal.SIGKILL)


def test_same_seed_same_batches(four_shards: Path) -> None:
    runs = [list(datamodule(four_shards, num_workers=2, seed=seed).train_dataloader()) for seed in (3, 3, 4)]
    a, b, c = runs
    assert [x.keys for x in a] == [y.keys for y in b]
    for x, y in zip(a, b):
        assert torch.equal(x.text_ids, y.text_ids) and torch.equal(x.itm_labels, y.itm_labels)
        assert torch.equal(x.pixels, y.pixels)
    assert [x.keys for x in a] != [z.keys for z in c]


def test_val_is_not_shuffled(four_shards: Path) -> None:
    dm = datamodule(four_shards, num_workers=0)
    assert epoch_keys(dm.val_dataloader()) == [f"v{s}-{i}" for s in range(4) for i in range(3)]


def test_corrupt_and_incomplete_samples_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt = good_sample("corrupt-png")
    corrupt["png"] = b"\x89PNG\r\n\x1a\n this is not a png"
    truncated = good_sample("truncated-png")
    truncated["png"] = truncated["png"][: len(truncated["png"]) // 2]
    no_json = {"__key__": "no-json", "png": png_bytes((0, 0, 255))}
    no_captions = good_sample("no-captions")
    no_captions["json"] = json.dumps({"captions": [], "objects": []}).encode()
    good = [good_sample(f"good-{i}") for i in range(6)]
    shard = [good[0], corrupt, good[1], no_json, good[2], truncated, good[3], no_captions, good[4], good[5]]
    write_dataset(tmp_path, {"val": [shard]})

    dm = datamodule(tmp_path, num_workers=0)
    seen: list[str] = []
    skipped: list[str] = []
    with caplog.at_level(logging.WARNING):
        for batch in dm.val_dataloader():
            batch = dm.on_before_batch_transfer(batch, 0)
            seen += batch.keys
            skipped += batch.skipped_keys
    assert seen == [s["__key__"] for s in good]
    assert skipped == ["corrupt-png", "no-json", "truncated-png", "no-captions"]
    assert dm.num_skipped == 4
    assert "corrupt-png" in caplog.text and "image decode failed" in caplog.text
    assert "no-json" in caplog.text and "missing json" in caplog.text


def test_decoder_reasons() -> None:
    decoder = SampleDecoder().bind(ViltTransform(32, 16))
    assert isinstance(decoder(good_sample("ok")), DecodedSample)
    no_image = {"__key__": "k", "json": b"{}"}
    bad_json = {**good_sample("j"), "json": b"{not json"}
    assert decoder(no_image) == SkippedSample("k", "no image (jpg/jpeg/png/webp)")
    assert decoder(bad_json).reason.startswith("unreadable json")


def test_img2dataset_txt_caption_is_used() -> None:
    sample = {"__key__": "web", "jpg": png_bytes((1, 2, 3)), "txt": b"a photo of a dog", "json": b"{}"}
    decoded = SampleDecoder().bind(ViltTransform(32, 16))(sample)
    assert isinstance(decoded, DecodedSample) and decoded.captions == ["a photo of a dog"]


def test_unreadable_shard_is_reported_by_name(four_shards: Path, caplog: pytest.LogCaptureFixture) -> None:
    (four_shards / "val" / "shard-000002.tar").write_bytes(b"garbage, not a tar file" * 10)
    dm = datamodule(four_shards, num_workers=0)
    with caplog.at_level(logging.WARNING):
        keys = epoch_keys(dm.val_dataloader())
    assert "shard-000002.tar" in caplog.text
    assert Counter(keys) == Counter(f"v{s}-{i}" for s in (0, 1, 3) for i in range(3))


def test_resampled_epoch_has_the_requested_length(four_shards: Path) -> None:
    dm = datamodule(four_shards, num_workers=0, resampled=True, epoch_samples=10)
    loader = dm.train_dataloader()
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 3 and sum(len(b) for b in batches) == 12  # rounded up to whole batches
    with pytest.raises(ValueError, match="epoch_samples"):
        data_module(four_shards, resampled=True)


def test_missing_root_names_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="vlp data synth shapes") as info:
        data_module(missing).setup("fit")
    assert str(missing) in str(info.value)


def test_empty_split_names_the_folder(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"train": keyed_shards("t", 2, 2)})
    (tmp_path / "val").mkdir()
    dm = datamodule(tmp_path, num_workers=0)
    with pytest.raises(FileNotFoundError, match="vlp data synth shapes") as info:
        dm.val_dataloader()
    assert str(tmp_path / "val") in str(info.value)


def test_synth_generates_the_dataset_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "shapes"
    config = ShapesConfig(
        resolution=32,
        train_samples=8,
        val_samples=4,
        test_samples=4,
        pair_train_samples=0,
        pair_val_samples=0,
        pair_test_samples=0,
        samples_per_shard=4,
    )
    dm = data_module(root, synth=config, num_workers=0, **SMALL)
    with caplog.at_level(logging.INFO, logger="vlp.datamodules.shards"):
        dm.prepare_data()
        dm.prepare_data()
    lines = [r.getMessage() for r in caplog.records if r.name == "vlp.datamodules.shards"]
    assert len(lines) == 1 and "shapes dataset not found at" in lines[0] and "(16 samples)" in lines[0]
    dm.setup("fit")
    assert dm.vocab
    batches = list(dm.train_dataloader())
    assert sum(len(b) for b in batches) == 8 and sum(b.num_skipped for b in batches) == 0


def test_synth_never_touches_a_folder_it_did_not_write(tmp_path: Path) -> None:
    """Pointing a recipe with a ``synth`` block at one's own shards stops the run, naming the setting."""
    write_dataset(tmp_path / "mydata", {"train": keyed_shards("t", 1, 2)})
    before = {p: p.read_bytes() for p in (tmp_path / "mydata").rglob("*") if p.is_file()}
    dm = data_module(tmp_path / "mydata", synth=ShapesConfig(resolution=32, train_samples=4))
    with pytest.raises(
        ValueError, match=r"data\.init_args\.synth: null \(--data\.init_args\.synth=null\)"
    ) as info:
        dm.prepare_data()
    assert str(tmp_path / "mydata") in str(info.value) and "data.init_args.root" in str(info.value)
    assert {p: p.read_bytes() for p in (tmp_path / "mydata").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]


def jpeg_sample(key: str, rng: np.random.Generator) -> dict[str, Any]:
    """A sample whose JPEG is a random colour field with noise, of a random landscape or portrait size."""
    short, long = int(rng.integers(24, 40)), int(rng.integers(40, 70))
    height, width = (short, long) if rng.random() < 0.5 else (long, short)
    pixels = np.clip(
        np.repeat(np.repeat(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)), 8, 0), 8, 1)[
            :height, :width
        ]
        + rng.integers(-20, 21, (height, width, 3)),
        0,
        255,
    ).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    record = {"captions": [f"caption of {key}"]}
    return {"__key__": key, "jpg": buffer.getvalue(), "json": json.dumps(record).encode()}


def reference_pixels(data: bytes, image_size: int, patch_size: int) -> torch.Tensor:
    """ViLT's pixels written plainly: PIL decode, tensor resize, torchvision's float and normalisation."""
    image = F.pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))
    size = resized_shape(image.shape[1], image.shape[2], image_size, patch_size)
    image = F.resize(image, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    return F.normalize(F.to_dtype(image, torch.float32, scale=True), list(VILT_MEAN), list(VILT_STD))


def test_loader_workers_give_the_reference_pixels_of_jpegs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shards = [[jpeg_sample(f"j{s}-{i}", rng) for i in range(6)] for s in range(2)]
    write_dataset(tmp_path, {"train": shards})
    stored = {sample["__key__"]: sample["jpg"] for shard in shards for sample in shard}
    dm = datamodule(tmp_path, num_workers=2, image_size=32, patch_size=16)
    seen = []
    for loaded in dm.train_dataloader():
        assert loaded.pixels.dtype == torch.uint8  # made in the workers; normalised on the model's device
        assert (loaded.pixels[~loaded.pixel_mask.unsqueeze(1).expand_as(loaded.pixels)] == 0).all()
        batch = dm.on_after_batch_transfer(loaded, 0)
        assert batch.pixels.dtype == torch.float32
        for row, key in enumerate(batch.keys):
            expected = reference_pixels(stored[key], 32, 16)
            h, w = expected.shape[1:]
            assert torch.equal(batch.pixels[row, :, :h, :w], expected), key
            assert batch.pixel_mask[row, :h, :w].all() and batch.pixel_mask[row].sum() == h * w
            assert (batch.pixels[row][:, ~batch.pixel_mask[row]] == 0).all()
            seen.append(key)
    assert sorted(seen) == sorted(stored)
