"""Trainer configs (configs/trainer/*.yaml) combine with the default recipe; the SLURM script uses them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import printed_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/vilt/shapes_pretrain.yaml"
TRAINER_CONFIGS = sorted((ROOT / "configs/trainer").glob("*.yaml"))
SBATCH = ROOT / "scripts/slurm/vlp_fit.sbatch"


def resolved_trainer(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    return printed_config(capsys, "--config", str(RECIPE), "--config", str(config), *extra)["trainer"]


def assert_contains(resolved: Any, given: Any, where: str = "trainer") -> None:
    """Every value of ``given`` is in ``resolved`` (which also holds the defaults filled in)."""
    if isinstance(given, dict):
        for key, value in given.items():
            assert key in resolved, f"{where}.{key}"
            assert_contains(resolved[key], value, f"{where}.{key}")
    elif isinstance(given, list):
        assert len(resolved) == len(given), where
        for i, (a, b) in enumerate(zip(resolved, given)):
            assert_contains(a, b, f"{where}[{i}]")
    else:
        assert resolved == given, where


def test_every_strategy_has_a_trainer_config() -> None:
    assert {p.stem for p in TRAINER_CONFIGS} >= {"cpu", "ddp", "fsdp", "multinode_slurm"}


@pytest.mark.parametrize("config", TRAINER_CONFIGS, ids=lambda p: p.stem)
def test_trainer_config_parses_with_the_default_recipe(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = yaml.safe_load(config.read_text())["trainer"]
    trainer = resolved_trainer(config, capsys)
    assert_contains(trainer, own)  # the later --config wins over the recipe, key by key
    recipe = yaml.safe_load(RECIPE.read_text())["trainer"]
    kept = {k: v for k, v in recipe.items() if k not in own and not isinstance(v, dict | list)}
    assert kept and {k: trainer[k] for k in kept} == kept  # the recipe's other settings stay


def test_ddp_config(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = resolved_trainer(ROOT / "configs/trainer/ddp.yaml", capsys)
    assert (trainer["strategy"], trainer["accelerator"], trainer["devices"]) == ("ddp", "cpu", 2)


def test_fsdp_config_shards_over_every_process(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = resolved_trainer(ROOT / "configs/trainer/fsdp.yaml", capsys)
    strategy = trainer["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
    sizes = strategy["init_args"]
    assert sizes["tensor_parallel_size"] == 1
    assert sizes["data_parallel_size"] == trainer["devices"] * trainer["num_nodes"]


def test_multinode_slurm_config_requeues_on_sigusr1(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = resolved_trainer(
        ROOT / "configs/trainer/multinode_slurm.yaml", capsys, "--trainer.num_nodes=3", "--trainer.devices=8"
    )
    # devices may be an int, a list or a string: "8" from the command line stays a string
    assert (trainer["num_nodes"], str(trainer["devices"]), trainer["strategy"]) == (3, "8", "ddp")
    (plugin,) = trainer["plugins"]
    assert plugin["class_path"] == "lightning.fabric.plugins.environments.SLURMEnvironment"
    assert plugin["init_args"] == {"auto_requeue": True, "requeue_signal": "SIGUSR1"}


def test_sbatch_script_runs_the_cli_with_the_slurm_config_and_requeue_signal() -> None:
    text = SBATCH.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?$", text, flags=re.MULTILINE))
    assert directives["signal"] == "SIGUSR1@90"
    assert "requeue" in directives
    assert directives["ntasks-per-node"] == directives["gpus-per-node"]  # one task per GPU
    (command,) = re.findall(r"^srun .*?(?<!\\)$", text, flags=re.MULTILINE | re.DOTALL)
    assert "-m vlp fit" in command
    assert "--config configs/trainer/multinode_slurm.yaml" in command
    assert (ROOT / "configs/trainer/multinode_slurm.yaml").is_file()
    assert '--trainer.devices="$SLURM_NTASKS_PER_NODE"' in command
    assert '--trainer.num_nodes="$SLURM_JOB_NUM_NODES"' in command
    bash = shutil.which("bash")
    if bash is not None:
        subprocess.run([bash, "-n", str(SBATCH)], check=True)
