"""Data-vs-model checks (vlp.checks): refused before any work, naming both values; and through the CLI."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import make_tiny_vilt
from vlp.checks import check_data_fits_model
from vlp.cli import main
from vlp.errors import UserError
from vlp.models.ernie_vilg.model import ERNIEViLG


def data(image_size: int = 32, patch_size: int = 8, max_text_len: int = 16) -> SimpleNamespace:
    """The datamodule attributes the checks read: ShardDataModule's transform and collator parts."""
    return SimpleNamespace(
        transform=SimpleNamespace(image_size=image_size, patch_size=patch_size),
        collator=SimpleNamespace(max_text_len=max_text_len),
    )


def test_matching_data_and_model_pass() -> None:
    check_data_fits_model(make_tiny_vilt(patch_size=8), data())  # tiny ViLT: max_len 16
    check_data_fits_model(make_tiny_vilt(patch_size=8), None)


def test_a_different_patch_size_is_refused_naming_both() -> None:
    with pytest.raises(UserError) as refused:
        check_data_fits_model(make_tiny_vilt(patch_size=8), data(patch_size=16))
    message = str(refused.value)
    assert "data.init_args.transform.init_args.patch_size=16" in message
    assert "visual_embedder (ViTPatchEmbedder) has patch_size=8" in message


def test_an_image_size_off_the_patch_grid_is_refused_naming_both() -> None:
    with pytest.raises(UserError) as refused:
        check_data_fits_model(make_tiny_vilt(patch_size=8), data(image_size=36))
    message = str(refused.value)
    assert (
        "data.init_args.transform.init_args.image_size=36 is not a multiple of "
        "data.init_args.transform.init_args.patch_size=8"
    ) in message
    assert "e.g. 32 or 40" in message


def test_an_image_size_off_the_models_patch_grid_is_refused_without_a_data_patch_size() -> None:
    without_patch = SimpleNamespace(
        transform=SimpleNamespace(image_size=36), collator=SimpleNamespace(max_text_len=16)
    )
    with pytest.raises(UserError, match=r"image_size=36 is not a multiple of the model's patch size: .*=8"):
        check_data_fits_model(make_tiny_vilt(patch_size=8), without_patch)


def test_a_text_longer_than_the_position_table_is_refused_naming_both() -> None:
    with pytest.raises(UserError) as refused:
        check_data_fits_model(make_tiny_vilt(patch_size=8), data(max_text_len=17))
    message = str(refused.value)
    assert "data.init_args.collator.init_args.max_text_len=17" in message
    assert "text_embedder (TextEmbedder) has max_len=16" in message


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(UserError) as refused:
        check_data_fits_model(make_tiny_vilt(patch_size=8), data(patch_size=16, max_text_len=40))
    assert "patch_size=16" in str(refused.value) and "max_text_len=40" in str(refused.value)


def test_ernie_vilg_text_positions_are_checked() -> None:
    model = ERNIEViLG(vocab_size=50, num_codes=8, grid=(2, 2), dim=16, depth=1, num_heads=2, max_text_len=8)
    check_data_fits_model(model, data(max_text_len=8))
    with pytest.raises(UserError, match=r"max_text_len=9 .* \(ERNIEViLG\) has max_text_len=8"):
        check_data_fits_model(model, data(max_text_len=9))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("--data.init_args.transform.init_args.image_size=36", ["image_size=36", "patch_size=8"]),
        ("--data.init_args.collator.init_args.max_text_len=40", ["max_text_len=40", "max_len=16"]),
        ("--data.init_args.transform.init_args.patch_size=16", ["patch_size=16", "patch_size=8"]),
    ],
)
def test_the_cli_refuses_a_mismatch_before_any_work(
    override: str, named: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root=tmp_path / "no_data_needed")))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), override, f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("vlp: error:")]
    assert line.startswith("vlp: error: the data does not fit the model: ")
    for value in named:
        assert value in line
    assert "Traceback" not in err
    assert not (tmp_path / "no_data_needed").exists()  # refused before the data is touched


def tiny_recipe(root: Path) -> dict:
    """A tiny ViLT ITM recipe: patch 8, 32 px, text positions 16."""
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "logger": False},
        "model": {
            "class_path": "vlp.tasks.PretrainTask",
            "init_args": {
                "model": {
                    "class_path": "vlp.models.vilt.ViLT",
                    "init_args": {
                        "text_embedder": {
                            "class_path": "vlp.models.embedders.text.TextEmbedder",
                            "init_args": {"vocab_size": 30522, "dim": 32, "max_len": 16},
                        },
                        "visual_embedder": {
                            "class_path": "vlp.models.embedders.ViTPatchEmbedder",
                            "init_args": {"dim": 32, "patch_size": 8, "pos_grid": 4},
                        },
                        "encoder": {
                            "class_path": "vlp.models.layers.transformer.TransformerEncoder",
                            "init_args": {"dim": 32, "depth": 1, "num_heads": 2},
                        },
                    },
                },
                "objectives": {
                    "itm": {
                        "class_path": "vlp.objectives.ITMObjective",
                        "init_args": {
                            "head": {
                                "class_path": "vlp.models.layers.heads.ITMHead",
                                "init_args": {"dim": 32},
                            }
                        },
                    }
                },
                "loss_weights": {"itm": 1.0},
            },
        },
        "data": {
            "class_path": "vlp.datamodules.shards.ShardDataModule",
            "init_args": {
                "root": str(root),
                "batch_size": 4,
                "num_workers": 0,
                "transform": {
                    "class_path": "vlp.datamodules.transforms.ViltTransform",
                    "init_args": {"image_size": 32, "patch_size": 8},
                },
                "decoder": {"class_path": "vlp.datamodules.decode.SampleDecoder"},
                "collator": {
                    "class_path": "vlp.datamodules.collate.PretrainCollator",
                    "init_args": {"max_text_len": 16},
                },
            },
        },
    }
