"""``python -m vlp bench data`` at a tiny size: every loader reads every image once per pass, the table and
the JSON report the same figures, the bare torchvision loop resizes to exactly vlp's pixels, and bad
options are named."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vlp.bench.data_loader import (
    LOADERS,
    DataLoaderConfig,
    Normalised,
    bare_loader,
    caption,
    convert,
    pil_image,
    synthetic_jpeg,
    torchvision_image,
    vlp_loader,
    write_images,
)
from vlp.cli import main
from vlp.datamodules import normalise_batch
from vlp.datamodules.decode import decode_pixels
from vlp.datamodules.transforms import ViltTransform, long_side_cap

TINY = [
    "--images=40",
    "--size=32",
    "--patch_size=16",
    "--jpeg_size=40",
    "--batch_size=4",
    "--samples_per_shard=10",
    "--shuffle_buffer=8",
    "--repeats=2",
    "--warmup=1",
    "--warmup_batches=2",
]


@pytest.mark.parametrize("workers", [0, 1])
def test_tiny_run_prints_the_table_and_writes_the_json(
    workers: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, record = tmp_path / "data.md", tmp_path / "data.json"
    main(["bench", "data", *TINY, f"--workers={workers}", "--out", str(out), "--json", str(record)])
    printed = capsys.readouterr().out.strip()
    lines = printed.splitlines()
    result = json.loads(record.read_text())
    assert result["config"]["workers"] == workers and result["files"]["shards"] == 4
    assert result["images_per_pass"] == {name: [40, 40] for name in LOADERS}
    # 10 batches of 4 in a pass, the first 2 not timed: 32 images, whichever worker made which batch
    assert result["timed_images"] == {name: [32, 32] for name in LOADERS}
    assert all(rate > 0 for rates in result["loader_images_per_second"].values() for rate in rates)
    assert {name: len(values) for name, values in result["writer_seconds"].items()} == {
        "write_shards": 2,
        "copy": 2,
    }
    ratio = result["loader_median_images_per_second"]["vlp"] / max(
        result["loader_median_images_per_second"][name] for name in ("bare-pil", "bare-torchvision")
    )
    assert result["ratio_vlp_over_bare"] == pytest.approx(ratio)
    assert (
        lines[0]
        == f"`python -m vlp bench data {' '.join(TINY)} --workers={workers} --out {out} --json {record}`"
    )
    assert result["cpu"] in printed
    loader = re.fullmatch(
        r"loader images/s ratio vlp / bare \((bare-pil|bare-torchvision)\): (\d+\.\d\d) \(goal >= 0\.9\)",
        lines[-1],
    )
    assert loader is not None and loader[1] == result["fastest_bare"]
    assert float(loader[2]) == pytest.approx(result["ratio_vlp_over_bare"], abs=0.005)
    converter = re.fullmatch(r"converter images/s ratio write_shards / copy: (\d+\.\d\d)", lines[-2])
    on_cpu = re.fullmatch(
        r"loader images/s ratio vlp normalised on the CPU / bare \((bare-pil|bare-torchvision)\): (\d+\.\d\d)",
        lines[-3],
    )
    assert on_cpu is not None and on_cpu[1] == result["fastest_bare"]
    assert float(on_cpu[2]) == pytest.approx(result["ratio_vlp_normalised_on_cpu_over_bare"], abs=0.005)
    assert converter is not None
    assert float(converter[1]) == pytest.approx(result["ratio_write_shards_over_copy"], abs=0.005)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| loader")]
    vlp_row = next(row for row in rows if row.startswith("| vlp `ShardDataModule`"))
    cells = vlp_row.split(" | ")
    assert float(cells[1]) == pytest.approx(result["loader_median_images_per_second"]["vlp"], abs=0.05)
    assert cells[-1] == "40 |"
    assert any(row.startswith("| `write_shards(WebConverter(pairs=TSV), workers=1)`") for row in rows)
    assert out.read_text().strip() == printed


def test_bare_torchvision_loop_gives_vlps_pixels_and_pil_within_two_levels() -> None:
    rng = np.random.default_rng(3)
    transform = ViltTransform(image_size=48, patch_size=16)
    for _ in range(4):
        data = synthetic_jpeg(rng, 50)
        ours = transform(decode_pixels(data))  # uint8, normalised on the model's device
        assert ours.dtype == torch.uint8
        assert torch.equal(torch.from_numpy(torchvision_image(data, 48, 16)), ours)
        bare_pil = torch.from_numpy(pil_image(data, 48, 16).copy())
        # PIL's bicubic and torchvision's round their two fixed-point passes differently
        assert bare_pil.shape == ours.shape and (bare_pil.int() - ours.int()).abs().max() <= 2


def test_synthetic_images_have_the_asked_sides_and_captions_words() -> None:
    rng = np.random.default_rng(0)
    from PIL import Image

    for _ in range(6):
        image = Image.open(io.BytesIO(synthetic_jpeg(rng, 60)))
        assert image.format == "JPEG" and min(image.size) == 60 and max(image.size) <= long_side_cap(60)
    words = caption(rng).rstrip(".").split()
    assert 8 <= len(words) <= 16


def test_bare_loader_shares_the_shards_out_between_workers(tmp_path: Path) -> None:
    from PIL import Image

    urls = []
    for shard in range(2):
        url = tmp_path / f"shard-{shard}.tar"
        with tarfile.open(url, "w") as tar:
            for index in range(3):
                buffer = io.BytesIO()
                Image.new("RGB", (16 + 8 * shard, 16), (index, 0, 0)).save(buffer, format="JPEG")
                for name, data in (
                    (f"{shard}{index}.jpg", buffer.getvalue()),
                    (f"{shard}{index}.json", b"{}"),
                ):
                    member = tarfile.TarInfo(name)
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
        urls.append(str(url))
    config = DataLoaderConfig(
        images=6, size=16, patch_size=8, workers=2, batch_size=2, samples_per_shard=3, warmup_batches=0
    )
    batches = list(bare_loader(config, urls, "bare-pil"))
    # each worker reads one shard of 3: a batch of 2 and one of 1 each, every image once
    assert sorted(b.shape[0] for b in batches) == [1, 1, 2, 2]
    assert sorted(b.shape[-1] for b in batches) == [16, 16, 24, 24]  # shard 1's are wider
    assert sum(b.shape[0] for b in batches) == 6 and all(b.dtype == torch.uint8 for b in batches)


def test_vlp_loaders_yield_uint8_batches_and_the_normalised_batches_the_model_gets(tmp_path: Path) -> None:
    # the "vlp" row times the loader's uint8 batches (as the bare loops time theirs); the second vlp row
    # includes the hook's normalisation, on the CPU here
    config = DataLoaderConfig(
        images=6,
        size=32,
        patch_size=16,
        jpeg_size=40,
        workers=0,
        batch_size=4,
        samples_per_shard=3,
        warmup_batches=0,
    )
    write_images(config, tmp_path / "raw")
    convert(config, tmp_path / "raw", tmp_path / "shards")
    raw = list(vlp_loader(config, tmp_path / "shards"))
    timed = list(Normalised(vlp_loader(config, tmp_path / "shards")))
    assert [len(b) for b in raw] == [4, 2] and all(b.pixels.dtype == torch.uint8 for b in raw)
    for got, loaded in zip(timed, raw, strict=True):
        expected = normalise_batch(loaded)
        assert got.keys == expected.keys and got.pixels.dtype == torch.float32
        assert torch.equal(got.pixels, expected.pixels)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--images=0"], "images, batch_size, samples_per_shard and repeats must be >= 1"),
        (["--workers=-1"], "workers, warmup, warmup_batches, shuffle_buffer and seed must be >= 0"),
        (["--size=16", "--patch_size=32"], "size 16 must be at least one patch"),
        (
            ["--images=40", "--samples_per_shard=40", "--workers=2"],
            "make 1 shard\\(s\\), fewer than the 2 workers",
        ),
        (["--images=40", "--batch_size=10", "--warmup_batches=4", "--workers=1"], "none left to time"),
    ],
)
def test_bad_options_are_named(option: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "data", *option])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_an_unknown_option_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "data", "--batch-size=4"])
    assert exit_.value.code == 2 and "--batch-size" in capsys.readouterr().err
