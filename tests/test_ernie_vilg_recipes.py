"""The ERNIE-ViLG shapes recipes (16x16 and 8x8 codes): they parse with the 2-process trainer configs, the
8x8 one reads the f = 8 VQGAN recipe's run and matches its codes; a recipe stops with a clear error
without the VQGAN checkpoint, runs fast_dev_run through the CLI from a VQGANTask-style checkpoint (random
weights) and prints its metrics, and ``predict`` writes a PNG grid and captions, and its metrics for a
sweep's predict stage; the paper config builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import (
    CONFIGS,
    FAST_DEV_RUN,
    combined_with_trainer_config,
    fit_recipe,
    run_recipe,
)
from vlp.cli import main

RECIPE = CONFIGS / "ernie_vilg/shapes_pretrain.yaml"
RECIPE_F8 = CONFIGS / "ernie_vilg/shapes_pretrain_f8.yaml"
# each shapes text-to-image recipe and the fixture holding a VQGAN checkpoint of its VQGAN recipe's architecture
RECIPES_AND_VQGANS = [(RECIPE, "vqgan_checkpoint"), (RECIPE_F8, "vqgan_f8_checkpoint")]

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
@pytest.mark.parametrize(
    ("recipe", "vqgan_run"), [(RECIPE, "vqgan_shapes_f4"), (RECIPE_F8, "vqgan_shapes_f8")], ids=["f4", "f8"]
)
def test_recipe_combines_with_the_multi_process_trainer_configs(
    trainer: str, recipe: Path, vqgan_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    resolved = combined_with_trainer_config(capsys, recipe, trainer)
    assert resolved["model"]["init_args"]["vqgan_checkpoint"] == f"runs/{vqgan_run}/checkpoints/last.ckpt"


def test_recipe_without_the_vqgan_checkpoint_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.ckpt"
    with pytest.raises(SystemExit) as exit_info:  # a user error: one line, exit status 2 (vlp.errors)
        main(["fit", "--config", str(RECIPE), f"--model.init_args.vqgan_checkpoint={missing}"])
    assert exit_info.value.code == 2
    assert f"vqgan_checkpoint {missing} not found" in capsys.readouterr().err


def test_the_f8_recipe_reads_the_f8_vqgan_recipes_checkpoint_and_matches_its_codes() -> None:
    """shapes_pretrain_f8.yaml's generator predicts the codes of configs/vqgan/shapes_vqgan_f8.yaml's run:
    the same grid (64 px / 8), codebook size and code width, read from that recipe's run folder."""
    vqgan_recipe = yaml.safe_load((CONFIGS / "vqgan/shapes_vqgan_f8.yaml").read_text())
    vqgan = yaml.safe_load((CONFIGS / "model/vqgan_shapes_f8.yaml").read_text())["init_args"]
    task = yaml.safe_load(RECIPE_F8.read_text())["model"]["init_args"]
    model = yaml.safe_load((CONFIGS / "model/ernie_vilg_shapes_f8.yaml").read_text())["init_args"]
    assert vqgan_recipe["model"]["init_args"]["model"] == "../model/vqgan_shapes_f8.yaml"
    assert task["model"] == "../model/ernie_vilg_shapes_f8.yaml"
    assert task["vqgan_checkpoint"] == f"{vqgan_recipe['trainer']['default_root_dir']}/checkpoints/last.ckpt"
    factor = 2 ** (len(vqgan["ch_mult"]) - 1)
    assert model["grid"] == [vqgan["resolution"] // factor] * 2 == [8, 8]
    assert (model["num_codes"], model["code_dim"]) == (vqgan["num_codes"], vqgan["code_dim"])
    assert task["prompt_dropout"] > 0 and task["guidance_scale"] > 1  # guidance needs the null prompt trained


@pytest.mark.parametrize(("recipe", "vqgan"), RECIPES_AND_VQGANS, ids=lambda v: getattr(v, "stem", v))
def test_recipe_runs_fast_dev_run_and_predicts(
    recipe: Path,
    vqgan: str,
    shapes64: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    vqgan_checkpoint = request.getfixturevalue(vqgan)
    common = (
        f"--model.init_args.vqgan_checkpoint={vqgan_checkpoint}",
        "--model.init_args.meteor=false",
        "--model.init_args.max_caption_len=8",
        "--model.init_args.num_candidates=2",
        f"--model.init_args.predict_dir={tmp_path / 'pred'}",
    )
    metrics = ("val/t2i_loss", "val/i2t_loss", "val/bleu_4", "val/cider")
    fit_recipe(capsys, metrics, recipe, shapes64, tmp_path, *common, steps=FAST_DEV_RUN)
    record = {
        "class_path": "vlp.sweep.callback.MetricsRecord",
        "init_args": {"modes": {"predict/cider": "max"}},
    }
    run_recipe(  # the recipe's one batch of prompts; the callback a sweep's predict stage adds
        "predict", recipe, shapes64, tmp_path, *common, "--trainer.callbacks+=" + json.dumps(record), steps=()
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["complete"] and 0.0 <= metrics["final"]["predict/cider"] <= 10.0
    assert metrics["final"]["predict/bleu_4"] == metrics["final"]["predict/bleu_4"]  # computed, not NaN
    grid = Image.open(tmp_path / "pred" / "images_rank0_batch00000.png")
    assert grid.size[0] >= 2 * 64 and grid.size[1] >= 4 * 64  # 2 candidates x 4 prompts
    records = [
        json.loads(line) for line in (tmp_path / "pred" / "captions_rank0.jsonl").read_text().splitlines()
    ]
    assert len(records) == 4 and all(r["prompt"] and isinstance(r["generated_caption"], str) for r in records)


def test_paper_config_describes_the_paper_model() -> None:
    config = yaml.safe_load((CONFIGS / "model/ernie_vilg_paper.yaml").read_text())
    args = config["init_args"]
    assert config["class_path"] == "vlp.models.ernie_vilg.model.ERNIEViLG"
    assert (args["depth"], args["dim"], args["num_heads"], args["grid"], args["num_codes"]) == (
        48,
        4096,
        64,
        [32, 32],
        8192,
    )
    from vlp.models.ernie_vilg.model import ERNIEViLG

    with torch.device("meta"):  # 10B parameters: built on the meta device, no memory
        model = ERNIEViLG(**args)
    assert model.patterns[:4] == ["row", "row", "column", "row"] and model.patterns[-1] == "conv"
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    assert 9.0 < billions < 11.0, billions


ITM_RECIPE = CONFIGS / "ernie_vilg/shapes_itm_reranker.yaml"
ITM_SCORER = CONFIGS / "ernie_vilg/shapes_itm_reranker_scorer.yaml"


def test_the_reranker_part_is_the_itm_recipes_model_and_head() -> None:
    recipe = yaml.safe_load(ITM_RECIPE.read_text())
    scorer = yaml.safe_load(ITM_SCORER.read_text())
    task = recipe["model"]["init_args"]
    assert recipe["model"]["class_path"] == "vlp.tasks.PretrainTask"
    assert set(task["objectives"]) == {"mlm", "itm"} and task["loss_weights"] == {"mlm": 1.0, "itm": 1.0}
    assert scorer["init_args"]["model"] == task["model"]
    head = task["objectives"]["itm"]["init_args"]["head"]
    model = yaml.safe_load((CONFIGS / "model/vilt_vq_shapes.yaml").read_text())["init_args"]
    assert scorer["init_args"]["head"]["class_path"] == head["class_path"]
    assert head["init_args"]["dim"] == "${model.init_args.model.init_args.encoder.init_args.dim}"
    assert scorer["init_args"]["head"]["init_args"]["dim"] == model["encoder"]["init_args"]["dim"]
    run_dir = recipe["trainer"]["default_root_dir"]
    assert scorer["init_args"]["checkpoint"] == f"{run_dir}/checkpoints/last.ckpt"
    # its codes are the generator's: the VQGAN recipe's architecture and the ERNIE-ViLG recipe's checkpoint
    assert task["model"] == "../model/vilt_vq_shapes.yaml"
    embedder = model["visual_embedder"]
    assert embedder["init_args"]["vqgan"] == "vqgan_shapes.yaml"  # (relative to configs/model/)
    vqgan_recipe = yaml.safe_load((CONFIGS / "vqgan/shapes_vqgan.yaml").read_text())
    assert vqgan_recipe["model"]["init_args"]["model"] == "../model/vqgan_shapes.yaml"
    embedder = embedder["init_args"]
    ernie = yaml.safe_load(RECIPE.read_text())["model"]["init_args"]
    assert embedder["checkpoint"] == ernie["vqgan_checkpoint"]


def test_itm_recipe_trains_and_its_checkpoint_reranks_through_the_cli(
    vqgan_checkpoint: Path, shapes64: Path, tmp_path: Path
) -> None:
    embedder_checkpoint = "model.init_args.visual_embedder.init_args.checkpoint"
    run_recipe(
        "fit",
        ITM_RECIPE,
        shapes64,
        tmp_path / "itm",
        f"--model.init_args.{embedder_checkpoint}={vqgan_checkpoint}",
    )
    itm_checkpoint = tmp_path / "itm" / "checkpoints" / "last.ckpt"
    assert itm_checkpoint.is_file()
    pred = tmp_path / "pred"
    run_recipe(
        "predict", RECIPE, shapes64, tmp_path,
        f"--model.init_args.vqgan_checkpoint={vqgan_checkpoint}",
        "--model.init_args.meteor=false", "--model.init_args.max_caption_len=8",
        "--model.init_args.num_candidates=2", f"--model.init_args.predict_dir={pred}",
        f"--model.init_args.reranker={ITM_SCORER}",
        f"--model.init_args.reranker.init_args.checkpoint={itm_checkpoint}",
        f"--model.init_args.reranker.init_args.{embedder_checkpoint}={vqgan_checkpoint}",
        steps=("--trainer.logger=false",),
    )  # fmt: skip
    assert json.loads((pred / "generation_metrics.json").read_text())["reranker"] == "itm"
    records = [json.loads(line) for line in (pred / "captions_rank0.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["candidate_scores"]) == 2 for r in records)
    assert all(max(r["candidate_scores"]) <= 0 for r in records)  # ITM log-probabilities, best first
    assert all(r["candidate_scores"] == sorted(r["candidate_scores"], reverse=True) for r in records)
