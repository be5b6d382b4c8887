"""The fine-tuning recipes (VQA, NLVR2, retrieval): they parse, start from a pre-training checkpoint of the
pre-training recipe's sizes, run fast_dev_run through the CLI and print their metric; a missing
checkpoint names the recipe that writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, FAST_DEV_RUN, combined_with_trainer_config, fit_recipe, save_recipe_task
from vlp.cli import VLPCLI

PRETRAIN = CONFIGS / "vilt/shapes_pretrain.yaml"
RECIPES = {
    "vqa": ("vlp.tasks.VQATask", "val/vqa_score"),
    "nlvr2": ("vlp.tasks.NLVR2Task", "val/nlvr2_acc"),
    "retrieval": ("vlp.tasks.RetrievalTask", "val/t2i_r1"),
}

pytestmark = pytest.mark.filterwarnings("ignore")


def recipe(name: str) -> Path:
    return CONFIGS / f"vilt/shapes_{name}.yaml"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the pre-training recipe's task (random weights, Lightning's layout)."""
    return save_recipe_task(PRETRAIN, tmp_path_factory.mktemp("pretrain") / "last.ckpt")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_its_task_with_the_pretraining_sizes(name: str) -> None:
    cli = VLPCLI(args=["--config", str(recipe(name)), "--model.init_args.init_from=null"], run=False)
    task_class, _ = RECIPES[name]
    assert f"vlp.tasks.{type(cli.model).__name__}" == task_class
    pretrain = yaml.safe_load(PRETRAIN.read_text())["model"]["init_args"]["model"]
    own = yaml.safe_load(recipe(name).read_text())["model"]["init_args"]
    assert own["model"] == pretrain  # the pre-training run's sizes, so init_from loads every model key
    assert own["init_from"].startswith("runs/vilt_shapes_pretrain/")
    if name != "retrieval":  # official ViLT: the answer classifiers learn 10x faster
        assert cli.model.hparams.lr_multipliers == {f"objectives.{name}": 10.0}


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("trainer", ["ddp", "fsdp"])
def test_recipe_combines_with_the_multi_process_trainer_configs(
    name: str, trainer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    strategy = combined_with_trainer_config(capsys, recipe(name), trainer)["trainer"]["strategy"]
    given = yaml.safe_load((CONFIGS / f"trainer/{trainer}.yaml").read_text())["trainer"]["strategy"]
    assert strategy == given if isinstance(given, str) else strategy["class_path"] == given["class_path"]


def test_the_vqa_head_covers_the_shapes_answer_vocabulary() -> None:
    from vlp.datamodules.synth.scenes import COLOUR_NAMES, NUMBER_WORDS, SHAPES, SIZES, STYLES

    # every answer shapes can give: attributes, counts zero..four, yes/no
    answers = {*COLOUR_NAMES, *SHAPES, *SIZES, *STYLES, *NUMBER_WORDS[:5], "yes", "no"}
    own = yaml.safe_load(recipe("vqa").read_text())["model"]["init_args"]["objectives"]["vqa"]
    assert own["init_args"]["head"]["init_args"]["num_classes"] == len(answers)


def test_a_missing_pretraining_checkpoint_names_its_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/ here
    # LightningCLI hands the task's FileNotFoundError on inside a ValueError naming the config value
    with pytest.raises(
        (FileNotFoundError, ValueError),
        match=r"written by `python -m vlp fit --config \S*shapes_pretrain\.yaml`",
    ):
        VLPCLI(args=["--config", str(recipe("vqa"))], run=False)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_fast_dev_run_from_a_pretraining_checkpoint_and_prints_its_metric(
    name: str, pretrained: Path, shapes64: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = len(json.loads((shapes64 / "vocab.json").read_text())["answers"])
    args = [f"--model.init_args.init_from={pretrained}"]
    if name == "vqa":
        args.append(f"--model.init_args.objectives.vqa.init_args.head.init_args.num_classes={answers}")
    _, metric = RECIPES[name]
    fit_recipe(capsys, [metric], recipe(name), shapes64, tmp_path, *args, steps=FAST_DEV_RUN)
