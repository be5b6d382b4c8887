"""The VQGAN shapes recipes: they build what they say (f = 4 on 64 px, 512 EMA codes with restarts; the f = 8
recipe the same but for one more down-sampling level), run fast_dev_run through ``python -m vlp fit``
printing their metrics, and combine with the 2-process trainer configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, FAST_DEV_RUN, combined_with_trainer_config, fit_recipe
from vlp.cli import VLPCLI

RECIPE = CONFIGS / "vqgan/shapes_vqgan.yaml"
RECIPE_F8 = CONFIGS / "vqgan/shapes_vqgan_f8.yaml"

pytestmark = pytest.mark.filterwarnings("ignore")


def test_recipe_builds_an_f4_vqgan_with_an_ema_codebook_and_a_squared_error() -> None:
    cli = VLPCLI(args=["--config", str(RECIPE)], run=False)
    task = cli.model
    assert type(task).__name__ == "VQGANTask"
    model = task.model
    assert model.downsample_factor == 4 and model.grid == (16, 16) and model.num_codes == 512
    assert task.loss.mse_weight > 0
    assert model.quantize.ema and model.quantize.dead_code_threshold > 0 and task.loss.ema
    assert task.discriminator is not None and task.loss.disc_start > 0
    assert cli.datamodule.transform.image_size == 64


def test_f8_recipe_builds_an_8x8_code_vqgan_and_otherwise_is_the_f4_recipe() -> None:
    cli = VLPCLI(args=["--config", str(RECIPE_F8)], run=False)
    model = cli.model.model
    assert model.downsample_factor == 8 and model.grid == (8, 8) and model.num_codes == 512
    f4 = yaml.safe_load(RECIPE.read_text())
    f8 = yaml.safe_load(RECIPE_F8.read_text())
    assert f8["trainer"].pop("default_root_dir") == "runs/vqgan_shapes_f8"
    assert f4["trainer"].pop("default_root_dir") == "runs/vqgan_shapes_f4"
    assert f8["model"]["init_args"].pop("model") == "../model/vqgan_shapes_f8.yaml"
    f4["model"]["init_args"].pop("model")
    assert f8 == f4  # the loss, optimiser, schedule and data are the f4 recipe's


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
@pytest.mark.parametrize("recipe", [RECIPE, RECIPE_F8], ids=["f4", "f8"])
def test_recipe_combines_with_the_multi_process_trainer_configs(
    trainer: str, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    combined_with_trainer_config(capsys, recipe, trainer)


@pytest.mark.parametrize("recipe", [RECIPE, RECIPE_F8], ids=["f4", "f8"])
def test_recipe_runs_fast_dev_run_and_prints_its_metrics(
    recipe: Path, shapes64: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = ("val/psnr", "val/l1", "val/perplexity", "val/code_usage")
    fit_recipe(capsys, metrics, recipe, shapes64, tmp_path, steps=FAST_DEV_RUN)
