"""The VQGAN shapes recipe: it builds what it says (f = 4 on 64 px, 512 EMA codes with restarts), runs
fast_dev_run through ``python -m vlp fit`` printing its metrics, and combines with the 2-process trainer
configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlp.cli import VLPCLI, main
from vlp.datamodules.synth.scenes import ShapesConfig
from vlp.datamodules.synth.shapes import write_shapes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPE = CONFIGS / "vqgan/shapes_vqgan.yaml"

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def shapes64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "shapes64"
    sizes = {"train_samples": 16, "val_samples": 8, "test_samples": 8, "pair_train_samples": 0}
    sizes |= {"pair_val_samples": 0, "pair_test_samples": 0}
    write_shapes(root, ShapesConfig(resolution=64, samples_per_shard=8, seed=1, **sizes))
    return root


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


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_recipe_combines_with_the_multi_process_trainer_configs(
    trainer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(RECIPE),
                "--config",
                str(CONFIGS / f"trainer/{trainer}.yaml"),
                "--print_config",
            ]
        )
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err[-3000:]
    resolved = yaml.safe_load(captured.out)["trainer"]
    assert resolved["devices"] == 2
    assert resolved["max_steps"] == yaml.safe_load(RECIPE.read_text())["trainer"]["max_steps"]


def test_recipe_runs_fast_dev_run_and_prints_its_metrics(
    shapes64: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "fit",
            "--config",
            str(RECIPE),
            "--trainer.fast_dev_run=2",
            f"--trainer.default_root_dir={tmp_path}",
            f"--data.init_args.root={shapes64}",
            "--data.init_args.synth=null",
            "--data.init_args.batch_size=4",
            "--data.init_args.eval_batch_size=4",
            "--data.init_args.num_workers=0",
        ]
    )
    out = capsys.readouterr().out
    assert "final validation metrics:" in out
    for metric in ("val/psnr", "val/l1", "val/perplexity", "val/code_usage"):
        assert metric in out, metric
