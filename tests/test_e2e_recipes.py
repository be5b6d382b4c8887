"""The E2E-VLP shapes recipes: they parse, the pre-training builds the detection recipe's model
(anchored query groups, GroupNorm) in two stages (the encoder's objectives first, then all four from
them), captioning, VQA and detection start from it and load every pre-trained model key they have, each
runs fast_dev_run through the CLI and prints its metrics, and each combines with the 2-process trainer
configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, FAST_DEV_RUN, combined_with_trainer_config, fit_recipe
from vlp.cli import VLPCLI

PRETRAIN = CONFIGS / "e2e_vlp/shapes_pretrain.yaml"
ENCODER_STAGE = CONFIGS / "e2e_vlp/shapes_pretrain_encoder.yaml"
NO_INIT = "--model.init_args.init_from=null"
RECIPES = {
    "pretrain_encoder": ("vlp.tasks.E2EPretrainTask", ["val/mlm_loss", "val/itm_acc"]),
    "pretrain": (
        "vlp.tasks.E2EPretrainTask",
        ["val/mlm_loss", "val/itm_acc", "val/detection_loss", "val/caption_loss"],
    ),
    "detection": (
        "vlp.tasks.DetectionTask",
        ["val/map", "val/map_50", "val/map_small", "val/detection_loss"],
    ),
    "captioning": (
        "vlp.tasks.CaptioningTask",
        ["val/bleu_4", "val/cider", "val/rouge_l", "val/caption_loss"],
    ),
    "vqa": ("vlp.tasks.VQATask", ["val/vqa_score"]),
}

pytestmark = pytest.mark.filterwarnings("ignore")


def recipe(name: str) -> Path:
    return CONFIGS / f"e2e_vlp/shapes_{name}.yaml"


FROM_PRETRAINING = [n for n in RECIPES if not n.startswith("pretrain")]


@pytest.mark.parametrize("name", FROM_PRETRAINING)
def test_fine_tuning_recipe_loads_every_pretrained_model_key_it_has(name: str, e2e_pretrained: Path) -> None:
    # the pre-training builds the fine-tuning recipes' model: GroupNorm after the grid's projection,
    # 12 anchored object queries in 3 groups, so nothing of the model is new
    cli = VLPCLI(
        args=["--config", str(recipe(name)), f"--model.init_args.init_from={e2e_pretrained}"], run=False
    )
    task_class, _ = RECIPES[name]
    assert f"vlp.tasks.{type(cli.model).__name__}" == task_class
    report = cli.model.init_report
    assert [key for key in report.new if key.startswith("model.")] == []
    # benchmarks/RESULTS.md: detection from the pre-training is ahead of random weights at
    # every validated step (AP50 0.981 against 0.928 at 1500), so every fine-tuning recipe starts from it
    assert yaml.safe_load(recipe(name).read_text())["model"]["init_args"]["init_from"].startswith(
        "runs/e2e_shapes_pretrain/"
    )
    if name == "vqa":  # encoder only: the decoder, queries and caption head are dropped
        assert any(key.startswith("model.decoder.") for key in report.dropped)
        assert cli.model.model.decoder is None
    else:
        assert not any(key.startswith("model.") for key in report.dropped)


def test_pretraining_recipe_builds_the_detection_recipes_model() -> None:
    pretrain = yaml.safe_load(PRETRAIN.read_text())
    detection = yaml.safe_load(recipe("detection").read_text())
    assert pretrain["model"]["init_args"]["model"] == detection["model"]["init_args"]["model"]
    assert pretrain["trainer"]["precision"] == detection["trainer"]["precision"] == "bf16-mixed"
    cli = VLPCLI(args=["--config", str(PRETRAIN), NO_INIT], run=False)
    model = cli.model.model
    assert (model.num_queries, model.query_groups) == (12, 3) and model.reference_boxes is not None
    assert model.visual_embedder.input_norm is not None


def test_pretraining_recipe_weighs_all_four_objectives() -> None:
    cli = VLPCLI(args=["--config", str(PRETRAIN), NO_INIT], run=False)
    assert cli.model.loss_weights == {"mlm": 1.0, "itm": 1.0, "detection": 1.0, "caption": 1.0}
    assert cli.model.frozen == []
    head = cli.model.objectives["detection"].head
    vocab = {"categories": 6, "attributes": 12}  # shapes: 6 shapes; 8 colours, 2 sizes, 2 styles
    assert (head.num_classes, head.num_attributes) == (vocab["categories"], vocab["attributes"])


def test_pretraining_starts_from_the_encoder_stage_and_loads_every_key_of_it(
    e2e_encoder_pretrained: Path,
) -> None:
    # benchmarks/RESULTS.md, "E2E-VLP": from random weights the decoder's objectives keep ITM at chance
    # (0.500 at 1500 steps); after the encoder stage, ITM stays above 0.8 while they train
    assert yaml.safe_load(PRETRAIN.read_text())["model"]["init_args"]["init_from"] == (
        "runs/e2e_shapes_pretrain_encoder/checkpoints/last.ckpt"
    )
    cli = VLPCLI(
        args=["--config", str(PRETRAIN), f"--model.init_args.init_from={e2e_encoder_pretrained}"], run=False
    )
    report = cli.model.init_report
    assert report.new == [] and report.dropped == []


def test_the_encoder_stage_trains_mlm_and_itm_only_and_differs_from_the_joint_stage_in_nothing_else() -> None:
    cli = VLPCLI(args=["--config", str(ENCODER_STAGE)], run=False)
    assert cli.model.loss_weights == {"mlm": 1.0, "itm": 1.0, "detection": 0.0, "caption": 0.0}
    frozen = set(cli.model.frozen)
    assert {"model.decoder", "model.query_embed", "model.caption_head", "objectives.detection"} <= frozen
    assert not any(
        name.startswith(("model.encoder", "model.visual_embedder", "model.pooler")) for name in frozen
    )
    encoder, joint = (yaml.safe_load(path.read_text()) for path in (ENCODER_STAGE, PRETRAIN))
    # the same model, objectives and data (colour-word MLM, checked ITM negatives) in both stages
    assert encoder["data"] == joint["data"]
    collator = encoder["data"]["init_args"]["collator"]["init_args"]
    assert collator["mlm_probability"] == 0.0 and collator["grounded_mask_probability"] == 1.0
    assert collator["itm_negative_check"] == "vlp.datamodules.synth.truth.ShapesCaptionCheck"
    for key in ("model", "objectives", "lr", "lr_multipliers"):
        assert encoder["model"]["init_args"][key] == joint["model"]["init_args"][key], key
    assert "init_from" not in encoder["model"]["init_args"]


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_recipe_combines_with_the_multi_process_trainer_configs(
    name: str, trainer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    combined_with_trainer_config(capsys, recipe(name), trainer)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_fast_dev_run_and_prints_its_metrics(
    name: str,
    e2e_pretrained: Path,
    e2e_encoder_pretrained: Path,
    shapes64: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = []
    if name in FROM_PRETRAINING:
        args.append(f"--model.init_args.init_from={e2e_pretrained}")
    if name == "pretrain":
        args.append(f"--model.init_args.init_from={e2e_encoder_pretrained}")
    if name == "captioning":
        args += ["--model.init_args.meteor=false", "--model.init_args.max_caption_len=8"]
    fit_recipe(capsys, RECIPES[name][1], recipe(name), shapes64, tmp_path, *args, steps=FAST_DEV_RUN)
