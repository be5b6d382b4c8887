"""The shapes judge: targets from the objects, the recipe through ``python -m vlp fit``, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlp.batch import Batch, Targets
from vlp.cli import VLPCLI, main, run_lightning
from vlp.datamodules.synth.scenes import COLOUR_NAMES, MAX_OBJECTS, SHAPES
from vlp.metrics.shapes_judge import ShapesJudge
from vlp.tasks.shapes_judge import ShapesJudgeTask

RECIPE = Path(__file__).resolve().parents[2] / "configs/probe/shapes_judge.yaml"
pytestmark = pytest.mark.filterwarnings("ignore")


def test_targets_are_the_colour_shape_pairs_and_the_object_count() -> None:
    task = ShapesJudgeTask(
        ShapesJudge(list(COLOUR_NAMES), list(SHAPES), MAX_OBJECTS, channels=[4, 8], count_hidden=8)
    )
    # the data's own orders differ from the judge's: the maps go through the names
    categories = ["hexagon", "circle", "square", "triangle", "diamond", "star"]
    attributes = ["small", "large", *reversed(COLOUR_NAMES)]
    task.set_vocab(categories, attributes)

    def objects(*pairs: tuple[str, str]) -> Targets:
        labels = torch.tensor([categories.index(shape) for _, shape in pairs])
        attrs = torch.zeros(len(pairs), len(attributes))
        for row, (colour, _) in enumerate(pairs):
            attrs[row, [attributes.index(colour), 0]] = 1.0
        return Targets(torch.zeros(len(pairs), 4), labels, attrs)

    batch = Batch(
        keys=["a", "b"],
        pixels=torch.zeros(2, 3, 16, 16),
        targets=[
            objects(("red", "circle"), ("blue", "star"), ("red", "circle")),
            objects(("white", "hexagon")),
        ],
    )
    presence, counts = task.targets(batch)
    found = [{(COLOUR_NAMES[c], SHAPES[s]) for c, s in presence[row].nonzero().tolist()} for row in range(2)]
    assert found == [{("red", "circle"), ("blue", "star")}, {("white", "hexagon")}]
    assert counts.tolist() == [3, 1]
    with pytest.raises(ValueError, match=r"lacks the judge's names \['star'"):
        task.set_vocab(categories[:-1], attributes)


def test_recipe_builds_the_judge_on_detection_batches() -> None:
    cli = VLPCLI(args=["--config", str(RECIPE)], run=False)
    assert isinstance(cli.model, ShapesJudgeTask)
    assert cli.model.judge.cell_head.out_channels == len(COLOUR_NAMES) + len(SHAPES)
    assert cli.datamodule.collator.targets and cli.datamodule.transform.image_size == 64


def test_recipe_fits_through_the_cli_and_its_checkpoint_loads_as_a_judge(
    tmp_path: Path, tiny_shapes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_args = [
        f"--data.init_args.root={tiny_shapes}",
        "--data.init_args.synth=null",
        "--data.init_args.transform.init_args.image_size=32",
        "--data.init_args.batch_size=4",
        "--data.init_args.eval_batch_size=4",
        "--data.init_args.num_workers=0",
    ]
    main(
        [
            "fit",
            "--config",
            str(RECIPE),
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            f"--trainer.default_root_dir={tmp_path}",
            *data_args,
        ]
    )
    out = capsys.readouterr().out
    for name in ("val/presence_f1", "val/presence_exact", "val/count_acc", "val/presence_loss"):
        assert name in out, out
    # evaluation settings on the command line win over those saved in the checkpoint (vlp.cli.VLPCLI)
    validate = run_lightning([
        "validate", "--config", str(RECIPE), "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt"),
        "--model.init_args.count_weight=0.25", "--trainer.logger=false", *data_args,
    ])  # fmt: skip
    assert validate.model.count_weight == 0.25
    judge = ShapesJudge.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert not judge.training and judge.colours == list(COLOUR_NAMES)
    output = judge(torch.zeros(2, 3, 32, 32))
    assert output.presence_logits.shape == (2, len(COLOUR_NAMES), len(SHAPES))
    assert output.count_logits.shape == (2, judge.max_objects + 1)
    features = judge.feature_extractor()(torch.rand(3, 3, 32, 32))
    assert features.shape == (3, judge.feature_dim)


def test_a_missing_or_foreign_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"configs/probe/shapes_judge\.yaml"):
        ShapesJudge.from_checkpoint(tmp_path / "judge.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a ShapesJudgeTask checkpoint"):
        ShapesJudge.from_checkpoint(tmp_path / "other.ckpt")
