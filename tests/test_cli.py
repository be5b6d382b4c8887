"""The real command line: recipe parsing, validation and a fast_dev_run through `python -m vlp`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlp.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs/vilt/shapes_pretrain.yaml")


def test_print_config_shows_the_resolved_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", RECIPE, "--model.init_args.lr=0.0005", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: vlp.tasks.PretrainTask" in printed
    assert "lr: 0.0005" in printed
    assert "class_path: vlp.models.embedders.ViTPatchEmbedder" in printed


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("--model.init_args.learning_rate=0.1", "learning_rate"),
        ("--data.init_args.batch_sise=8", "batch_sise"),
        ("--model.init_args.model.init_args.encoder.init_args.depth=four", "depth"),
    ],
)
def test_a_bad_key_or_type_fails_before_work_naming_it(
    override: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", RECIPE, override, "--print_config"])
    assert exit_info.value.code != 0
    assert named in capsys.readouterr().err


def test_fit_fast_dev_run_through_the_real_cli(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    command = [
        sys.executable, "-m", "vlp", "fit", "--config", RECIPE,
        "--trainer.fast_dev_run=2",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--data.init_args.root={data}",
        "--data.init_args.synth.train_samples=64",
        "--data.init_args.synth.val_samples=32",
        "--data.init_args.synth.test_samples=32",
        "--data.init_args.synth.pair_train_samples=8",
        "--data.init_args.synth.pair_val_samples=8",
        "--data.init_args.synth.pair_test_samples=8",
        "--data.init_args.synth.samples_per_shard=16",
        "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generating" in (result.stdout + result.stderr)
    assert (data / "vocab.json").exists()
    assert "val/itm_acc" in result.stdout
