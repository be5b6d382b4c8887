"""``python -m vlp data convert <dataset>``: datasets by name, their options from the converter, the writer's
options, and user errors as one message with exit status 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from convert_helpers import coco_root, flickr_root, folder_bytes, read_back, write_json

from conftest import run_cli
from vlp.datamodules.convert import command
from vlp.datamodules.convert.manifest import Manifest


def convert(dataset: str, root: Path, out: Path, *options: str) -> list[str]:
    return [
        "data",
        "convert",
        dataset,
        "--root",
        str(root),
        "--out",
        str(out),
        "--progress",
        "false",
        *options,
    ]


def test_flickr30k_is_converted_and_summarised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, out = flickr_root(tmp_path / "raw"), tmp_path / "out"
    code, stdout, _ = run_cli(convert("flickr30k", root, out, "--workers", "1"), capsys)
    assert code is None
    assert stdout.splitlines() == [
        f"flickr30k -> {out}",
        "  train               2 samples in 1 shards, 0 dropped",
        "  val                 1 samples in 1 shards, 0 dropped",
        "  test                1 samples in 1 shards, 0 dropped",
    ]
    assert sorted(read_back(out, "train")) == ["1000092795", "10002456"]


def test_dataset_options_and_writer_options_reach_the_conversion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, out = coco_root(tmp_path / "raw"), tmp_path / "out"
    argv = convert(
        "coco", root, out, "--instances", "true", "--restval-to-train", "false", "--max-side", "16",
        "--samples-per-shard", "1", "--workers", "2",
    )  # fmt: skip
    code, stdout, _ = run_cli(argv, capsys)
    assert code is None
    manifest = Manifest.read(out)
    assert manifest.options == {
        "split_source": "karpathy",
        "year": 2014,
        "restval_to_train": False,
        "instances": True,
    }
    assert (manifest.max_side, manifest.samples_per_shard) == (16, 1)
    assert list(manifest.splits) == ["train", "restval", "val", "test"]
    assert manifest.splits["train"].shards == 2
    assert json.loads((out / "vocab.json").read_text()) == {"categories": ["person", "car", "dog"]}
    assert "3 annotations left out" in stdout


def test_a_wrong_root_is_a_user_error_naming_the_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "raw").mkdir()
    code, _, err = run_cli(convert("flickr30k", tmp_path / "raw", tmp_path / "out"), capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"vlp: error: flickr30k: the raw dataset folder {tmp_path / 'raw'} is missing 2 ")
    assert str(tmp_path / "raw" / "karpathy" / "dataset_flickr30k.json") in err
    assert not (tmp_path / "out").exists()


def test_an_out_folder_of_the_users_is_refused_and_left_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, out = flickr_root(tmp_path / "raw"), tmp_path / "out"
    write_json(out / "manifest.json", {"mine": True})
    code, _, err = run_cli(convert("flickr30k", root, out), capsys)
    assert code == 2
    assert err.startswith(f"vlp: error: --out {out} is not empty and holds no vlp conversion")
    assert folder_bytes(out) == {"manifest.json": b'{"mine": true}'}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--year", "2016"], "year: Expected a typing.Literal[2014, 2017]. Got value: 2016"),
        (["--instance", "true"], "unknown option --instance"),
        (["--year", "2017"], "Karpathy's split is of the 2014 images"),
        (["--max-side", "0"], "max_side must be a positive number of pixels"),
    ],
)
def test_a_bad_option_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    root = coco_root(tmp_path / "raw")
    code, _, err = run_cli(convert("coco", root, tmp_path / "out", *options), capsys)
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("vlp: error: ") and message in line


def test_an_unknown_dataset_lists_the_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["data", "convert", "cocoo", "--root", "x"], capsys)
    assert code == 2
    assert (
        err.strip() == f"vlp: error: unknown dataset 'cocoo'; the datasets are {', '.join(command.DATASETS)}"
    )


def test_a_registered_dataset_without_its_module_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = {"later": ("vlp.datamodules.convert.not_written_yet:LaterConverter", "a dataset to come")}
    monkeypatch.setattr(command, "DATASETS", {**command.DATASETS, **missing})
    code, _, err = run_cli(["data", "convert", "later", "--root", "x", "--out", "y"], capsys)
    assert code == 2
    assert err.strip() == (
        "vlp: error: dataset 'later': its converter (vlp.datamodules.convert.not_written_yet) is not part of "
        "this vlp installation"
    )


def test_the_datasets_of_the_other_converters_are_registered() -> None:
    assert {"coco", "flickr30k", "web", "vqav2", "nlvr2", "visual-genome"} <= set(command.DATASETS)


@pytest.mark.parametrize("dataset", list(command.DATASETS))
def test_every_dataset_prints_its_help_or_says_it_is_not_there(
    dataset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module = command.DATASETS[dataset][0].split(":")[0]
    code, out, err = run_cli(["data", "convert", dataset, "--help"], capsys)
    if importlib.util.find_spec(module) is None:
        assert code == 2 and "is not part of this vlp installation" in err
        return
    assert code == 0
    assert out.startswith(f"usage: python -m vlp data convert {dataset} --root ROOT --out OUT")
    assert "--max-side" in out and "--samples-per-shard" in out and "--workers" in out


def test_data_convert_without_a_dataset_prints_the_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["data", "convert", "--help"], capsys)
    assert code == 0
    listed = out.split("datasets:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in listed] == list(command.DATASETS)
    code, _, err = run_cli(["data", "convert"], capsys)
    assert code == 2 and err.startswith("usage: python -m vlp data convert <dataset>")
