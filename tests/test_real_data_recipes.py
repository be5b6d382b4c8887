"""The paper-scale ViLT recipes on converted real data, end to end at toy size.

For each dataset the recipe's own header commands (``python -m vlp data convert ...``, and any ``python -c``
helper) run in a scratch folder holding a tiny raw download in the published schema, built by the converter
tests' fixture builders (tests/datamodules/convert/); the recipe then trains 2 steps from scratch with the
tiny shapes ViLT on 64-px images and validates once, and its official metric must be logged and finite. The
recipe's data folders are read as they are written (relative ``data/...``), so a header command that writes
elsewhere than the recipe reads fails here.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from vlp.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
sys.path.insert(0, str(Path(__file__).parent / "datamodules" / "convert"))

import convert_helpers  # noqa: E402  (the converter tests' fixture builders, by path)
import test_nlvr2  # noqa: E402
import test_visual_genome  # noqa: E402
import test_vqav2  # noqa: E402
import test_web  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

RECALL = [f"val/{way}_r{k}" for way in ("t2i", "i2t") for k in (1, 5, 10)]


def from_fixture(fixture: Any) -> Callable[[Path], Path]:
    """A converter test's ``raw(tmp_path)`` fixture as a builder of the raw folder ``folder``: the fixture
    writes ``tmp_path / <dataset>``, so it is given ``folder``'s parent (pytest keeps the undecorated
    function as ``__wrapped__``)."""

    def build(folder: Path) -> Path:
        folder.parent.mkdir(parents=True, exist_ok=True)
        built = fixture.__wrapped__(folder.parent)
        assert built == folder, (built, folder)
        return built

    return build


def nlvr2_raw(folder: Path) -> Path:
    """The NLVR2 fixture (train, dev) with a test1 split: dev's statements and images renamed."""
    root = from_fixture(test_nlvr2.raw)(folder)
    lines = (root / "dev.json").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    renamed = [{**e, "identifier": e["identifier"].replace("dev-", "test1-", 1)} for e in entries]
    test_nlvr2.write_lines(root / "test1.json", renamed)
    for image in sorted((root / "images" / "dev").glob("*.png")):
        target = root / "images" / "test1" / image.name.replace("dev-", "test1-", 1)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    return root


def visual_genome_raw(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return test_visual_genome.write_vg(folder)


RAW: dict[str, Callable[[Path], Path]] = {
    "raw/coco": convert_helpers.coco_root,
    "raw/flickr30k": convert_helpers.flickr_root,
    "raw/vg": visual_genome_raw,
    "raw/sbu": test_web.img2dataset_shards,
    "raw/gcc": test_web.img2dataset_shards,
    "raw/vqav2": from_fixture(test_vqav2.raw),
    "raw/nlvr2": nlvr2_raw,
}
"""The raw folder a header command names with ``--root`` -> the builder of a tiny one in its schema."""


@dataclass(frozen=True)
class Case:
    recipe: str
    metrics: list[str]
    overrides: list[str] = field(default_factory=list)


CASES = {
    "coco": Case("coco_retrieval.yaml", RECALL),
    "flickr30k": Case("f30k_retrieval.yaml", RECALL),
    "web": Case("coco_vg_sbu_gcc_pretrain.yaml", ["val/itm_acc", "val/mlm_acc"]),
    "vqav2": Case("vqav2.yaml", ["val/vqa_accuracy", "val/vqa_score"]),
    "nlvr2": Case(
        "nlvr2.yaml",
        ["val/nlvr2_acc"],
        ["--model.init_args.objectives.nlvr2.init_args.head.init_args.input_dim=256"],  # 2 x the tiny width
    ),
}
"""Dataset -> the recipe that trains on it; the web pairs (SBU, GCC) are read with COCO and Visual Genome."""


def header_commands(recipe: Path) -> list[str]:
    """The shell commands of the recipe's header comment that make its data: ``python -m vlp data convert``
    and ``python -c`` lines (a trailing backslash continues a command on the next comment line)."""
    commands: list[str] = []
    pending = ""
    for line in recipe.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if pending:
            text = pending + " " + text
            pending = ""
        if text.endswith("\\"):
            pending = text[:-1].rstrip()
            continue
        if text.startswith(("python -m vlp data convert ", "python -c ")):
            commands.append(text)
    return commands


def make_data(recipe: Path, folder: Path) -> list[str]:
    """Run the recipe's data commands in ``folder`` (the working directory), each raw folder built first;
    returns the converted folders."""
    written = []
    for command in header_commands(recipe):
        if command.startswith("python -c "):
            subprocess.run(
                ["bash", "-c", sys.executable + command.removeprefix("python")], cwd=folder, check=True
            )
            continue
        argv = shlex.split(command, comments=True)[3:]  # after `python -m vlp`
        raw = argv[argv.index("--root") + 1]
        RAW[raw](folder / raw)
        main([*argv, "--workers", "1", "--progress", "false"])
        written.append(argv[argv.index("--out") + 1])
    return written


def logged(metrics_csv: Path) -> dict[str, float]:
    """The last value of every column of the run's metrics.csv."""
    values: dict[str, float] = {}
    with metrics_csv.open(newline="") as file:
        for row in csv.DictReader(file):
            values.update({key: float(value) for key, value in row.items() if value not in ("", None)})
    return values


@pytest.mark.parametrize("dataset", CASES)
def test_recipe_converts_its_data_trains_and_reports_its_metric(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vlp")
    case = CASES[dataset]
    recipe = CONFIGS / "vilt" / case.recipe
    monkeypatch.chdir(tmp_path)
    written = make_data(recipe, tmp_path)
    data = yaml.safe_load(recipe.read_text())["data"]["init_args"]
    roots = data["root"] if isinstance(data["root"], dict) else {data["root"]: None}
    assert sorted(written) == sorted(roots)  # the header makes every folder the recipe reads, no other

    overrides = list(case.overrides)
    if dataset == "vqav2":
        answers = json.loads((tmp_path / "data/vqav2/vocab.json").read_text())["answers"]
        overrides.append(
            f"--model.init_args.objectives.vqa.init_args.head.init_args.num_classes={len(answers)}"
        )
    run = tmp_path / "run"
    main(
        [
            "fit", "--config", str(recipe),
            "--config", str(CONFIGS / "trainer/cpu.yaml"), "--config", str(CONFIGS / "trainer/smoke.yaml"),
            "--trainer.accumulate_grad_batches=1",
            f"--trainer.default_root_dir={run}",
            "--model.init_args.init_from=null",
            f"--model.init_args.model={CONFIGS / 'model/vilt_shapes_p16.yaml'}",
            "--data.init_args.transform.init_args.image_size=64",
            "--data.init_args.transform.init_args.patch_size=16",
            "--data.init_args.batch_size=2",
            "--data.init_args.eval_batch_size=2",
            "--data.init_args.num_workers=0",
            *overrides,
        ]
    )  # fmt: skip
    if len(roots) > 1:
        assert f"training mixes {len(roots)} folders" in caplog.text
    values = logged(run / "metrics.csv")
    assert values["step"] == 1  # two optimiser steps (0 and 1) were logged
    for metric in case.metrics:
        assert metric in values, (metric, sorted(values))
        assert math.isfinite(values[metric]), (metric, values[metric])


PAPER = {  # recipe -> (batch, steps, init_from, classifier lr multiplier)
    "coco_vg_sbu_gcc_pretrain.yaml": (4096, 200_000, "zoo:timm:vit_base_patch32_384", None),
    "vqav2.yaml": (256, 17_334, "zoo:vilt:b32-mlm-itm", {"objectives.vqa": 10.0}),
    "nlvr2.yaml": (128, 6_748, "zoo:vilt:b32-mlm-itm", {"objectives.nlvr2": 10.0}),
    "coco_retrieval.yaml": (256, 22_138, "zoo:vilt:b32-mlm-itm", None),
    "f30k_retrieval.yaml": (256, 5_664, "zoo:vilt:b32-mlm-itm", None),
}
"""The paper's settings (arXiv 2102.03334, official ViLT's task configs): steps are 10 epochs of the training
questions / statements / captions at the batch size (200k for pre-training)."""


@pytest.mark.parametrize("name", PAPER)
def test_recipe_holds_the_papers_settings_on_eight_gpus(name: str) -> None:
    from test_recipes import ParseOnlyCLI

    ddp = ["--config", str(CONFIGS / "trainer/ddp.yaml"), "--trainer.accelerator=gpu", "--trainer.devices=8"]
    config = ParseOnlyCLI(args=["--config", str(CONFIGS / "vilt" / name), *ddp], run=False).config.as_dict()
    trainer, task, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
    batch, steps, init_from, multipliers = PAPER[name]
    assert int(trainer["devices"]) * data["batch_size"] * trainer["accumulate_grad_batches"] == batch
    assert (trainer["max_steps"], task["init_from"], task["lr_multipliers"]) == (
        steps,
        init_from,
        multipliers,
    )
    assert (task["lr"], task["weight_decay"], task["warmup"], task["end_lr_ratio"]) == (1e-4, 0.01, 0.1, 0.0)
    model = task["model"]["init_args"]
    encoder, embedder = model["encoder"]["init_args"], model["visual_embedder"]["init_args"]
    assert (encoder["dim"], encoder["depth"], encoder["num_heads"], embedder["patch_size"]) == (
        768,
        12,
        12,
        32,
    )
    transform = data["transform"]["init_args"]
    assert (
        transform["image_size"],
        transform["patch_size"],
        data["collator"]["init_args"]["max_text_len"],
    ) == (
        384,
        32,
        40,
    )
    pretraining = name == "coco_vg_sbu_gcc_pretrain.yaml"
    # pre-training samples 200 patches and does not augment; fine-tuning reads every patch, with RandAugment
    assert (embedder["max_image_len"], transform["randaugment"]) == (
        (200, False) if pretraining else (-1, True)
    )
    objectives = task["objectives"]
    if pretraining:
        assert task["loss_weights"] == {"mlm": 1.0, "itm": 1.0, "wpa": 0.1}
        collator = data["collator"]["init_args"]
        assert (collator["whole_word_masking"], collator["mlm_probability"], collator["itm"]) == (
            True,
            0.15,
            True,
        )
        assert (data["resampled"], sorted(data["root"])) == (
            True,
            ["data/coco", "data/gcc", "data/sbu", "data/vg"],
        )
    elif name == "vqav2.yaml":
        assert objectives["vqa"]["init_args"]["head"]["init_args"]["num_classes"] == 3129
    elif name == "nlvr2.yaml":
        assert objectives["nlvr2"]["init_args"]["head"]["init_args"]["input_dim"] == 2 * 768
    else:
        assert task["negatives"] == 15 and tuple(task["recall_at"]) == (1, 5, 10)
