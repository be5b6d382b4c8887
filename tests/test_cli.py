"""The real command line: recipe parsing, validation and a fast_dev_run through `python -m vlp`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from vlp.bench import BENCHMARKS
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


# ---- one top-level help, every --help exits 0 -----------------------------------------------------------

COMMANDS = ["fit", "validate", "test", "predict", "data", "zoo", "bench", "sweep"]


def test_top_level_help_lists_every_command_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    listed = [line.split()[0] for line in out.split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()]
    assert listed == COMMANDS


def test_no_command_prints_the_help_as_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli([], capsys)
    assert code == 2 and out == ""
    assert "commands:" in err and "  bench " in err


def test_an_unknown_command_names_itself_and_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["fitt", "--config", RECIPE], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "vlp: error: unknown command 'fitt' (did you mean fit?); the commands are "
        "fit, validate, test, predict, data, zoo, bench, sweep (`python -m vlp --help`)"
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["-h"],
        *[[command, "--help"] for command in COMMANDS],
        ["data", "synth", "--help"],
        ["data", "synth", "shapes", "--help"],
        ["zoo", "convert-vilt", "--help"],
        ["sweep", "run", "--help"],
        ["sweep", "status", "--help"],
        *[["bench", name, "--help"] for name in BENCHMARKS],
    ],
    ids=" ".join,
)
def test_every_help_prints_usage_and_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    assert out.startswith("usage: python -m vlp")


@pytest.mark.parametrize("command", ["data", "zoo", "bench", "sweep"])
def test_a_tool_command_without_its_subcommand_prints_its_help_as_a_usage_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli([command], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"usage: python -m vlp {command}")


# ---- user errors: one line, exit 2, no traceback --------------------------------------------------------


def error_line(err: str) -> str:
    """The one ``vlp: error:`` line of stderr, with no traceback anywhere."""
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("vlp: error:")]
    return line


def test_a_misspelt_key_is_one_line_naming_the_key_and_a_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["fit", "--config", RECIPE, "--data.init_args.batch_sise=8"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "vlp: error: command line: unknown key data.init_args.batch_sise (did you mean batch_size?); "
        "vlp.datamodules.shards.ShardDataModule has no argument 'batch_sise'"
    ]


def test_a_misspelt_key_in_a_recipe_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  init_args:\n    model:\n      init_args:\n        encoder:\n"
                       "          init_args: {deph: 2}\n")  # fmt: skip
    code, _, err = run_cli(["fit", "--config", RECIPE, "--config", str(overlay)], capsys)
    assert code == 2
    line = error_line(err)
    assert line.startswith(
        f"vlp: error: {overlay}: unknown key model.init_args.model.init_args.encoder.init_args.deph"
    )
    assert "(did you mean depth?)" in line and "vlp.models.layers.transformer.TransformerEncoder" in line


def test_a_wrong_type_names_the_key_the_value_and_where_it_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  max_steps: many\n")
    code, _, err = run_cli(["fit", "--config", RECIPE, "--config", str(overlay)], capsys)
    assert code == 2
    assert (
        error_line(err)
        == f"vlp: error: {overlay}: trainer.max_steps: Expected a <class 'int'>. Got value: many"
    )


@pytest.mark.parametrize("value", ["null", "None", ""])
def test_a_nested_part_set_to_null_on_the_command_line_says_how_to_turn_it_off(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """jsonargparse refuses null on the command line for a part inside another part (the collator's check
    inside the data module); the one line says so and names the way that works, a layered file."""
    key = "data.init_args.collator.init_args.itm_negative_check"
    code, _, err = run_cli(["fit", "--config", RECIPE, f"--{key}={value}"], capsys)
    assert code == 2
    line = error_line(err)
    assert line.startswith(f"vlp: error: command line: {key}: ")
    assert "itm_negative_check: null" in line and "--config" in line


def test_abbreviated_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["fit", "--config", RECIPE, "--trainer.max_step=3", "--print_config"], capsys)
    assert code == 2 and "max_steps: 3" not in out
    assert error_line(err) == (
        "vlp: error: command line: unknown option --trainer.max_step=3 (did you mean --trainer.max_steps?); "
        "`python -m vlp fit --help` lists the options"
    )


def test_abbreviations_are_refused_inside_classes_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        ["validate", "--config", RECIPE, "--data.init_args.batch_siz=8", "--print_config"], capsys
    )
    assert code == 2
    assert "unknown key data.init_args.batch_siz (did you mean batch_size?)" in error_line(err)


def test_a_yaml_syntax_error_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_steps: 10\n  callbacks: [a, b\n  devices: 1\n")
    code, _, err = run_cli(["fit", "--config", RECIPE, "--config", str(broken)], capsys)
    assert code == 2
    line = error_line(err)
    assert line.startswith(f"vlp: error: {broken}:4:10: not valid YAML: ")
    assert "line 3" in line  # where the unclosed [ opened


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["fit", "--config", str(tmp_path / "nowhere.yaml")], capsys)
    assert code == 2
    assert error_line(err) == f"vlp: error: --config: File does not exist: '{tmp_path / 'nowhere.yaml'}'"


def test_fit_without_a_recipe_says_to_give_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["fit"], capsys)
    assert code == 2
    assert error_line(err) == (
        "vlp: error: command line: no value for data, model; give a recipe with --config RECIPE.yaml"
    )


def test_a_constructors_value_error_names_the_class(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["fit", "--config", RECIPE, "--data.init_args.batch_size=0"], capsys)
    assert code == 2
    assert error_line(err).startswith(
        "vlp: error: vlp.datamodules.shards.ShardDataModule: batch sizes must be positive"
    )


def test_data_parts_that_do_not_fit_are_refused_naming_their_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        ["fit", "--config", RECIPE, "--data.init_args.decoder=vlp.datamodules.pairs.PairDecoder"], capsys
    )
    assert code == 2
    assert error_line(err).startswith(
        "vlp: error: vlp.datamodules.shards.ShardDataModule: data.init_args.collator PretrainCollator takes the "
        "samples of a SampleDecoder, but data.init_args.decoder is a PairDecoder"
    )
    captioning = str(ROOT / "configs/e2e_vlp/shapes_captioning.yaml")
    blind_eval = "--data.init_args.collator.init_args.shuffle_eval_images=true"
    code, _, err = run_cli(
        ["fit", "--config", captioning, "--model.init_args.init_from=null", blind_eval], capsys
    )
    assert code == 2
    assert error_line(err) == (
        "vlp: error: vlp.datamodules.e2e.E2ECollator: shuffle_eval_images=True needs shuffle_images=True "
        "(it extends that control)"
    )


def tiny_recipe(tmp_path: Path, root: Path) -> str:
    from test_checks import tiny_recipe as recipe

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe(root)))
    return str(path)


def test_a_missing_data_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nodata"
    code, _, err = run_cli(
        ["fit", "--config", tiny_recipe(tmp_path, missing), f"--trainer.default_root_dir={tmp_path}"], capsys
    )
    assert code == 2
    assert error_line(err).startswith(f"vlp: error: dataset folder {missing} does not exist; write one with")


def test_a_missing_checkpoint_is_one_line(
    tiny_shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.ckpt"
    argv = ["validate", "--config", tiny_recipe(tmp_path, tiny_shapes), f"--ckpt_path={missing}",
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert error_line(err) == f"vlp: error: Checkpoint file not found: {missing}"


@pytest.mark.parametrize("how", ["--traceback", "VLP_DEBUG"])
def test_traceback_or_vlp_debug_shows_the_full_trace(
    how: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fit", "--config", RECIPE, "--data.init_args.batch_sise=8"]
    if how == "VLP_DEBUG":
        monkeypatch.setenv("VLP_DEBUG", "1")
    else:
        argv.insert(1, "--traceback")  # anywhere on the command line
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert err.startswith("Traceback (most recent call last):")
    assert "jsonargparse" in err  # the parser's own chain of errors
    assert err.strip().splitlines()[-1].startswith("vlp.errors.UserError: command line: unknown key")


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import vlp.checks

    def bug(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(vlp.checks, "check_data_fits_model", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["fit", "--config", tiny_recipe(tmp_path, tmp_path / "data")])


def raise_from_vlp(error: Exception) -> Exception:
    """``error`` as raised by a statement in vlp's source (a small module compiled under its path)."""
    import vlp

    code = compile("raise error", str(Path(vlp.__file__).parent / "checks.py"), "exec")
    try:
        exec(code, {"error": error})
    except Exception as raised:
        return raised
    raise AssertionError("not raised")


def test_which_errors_are_the_users() -> None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from vlp.errors import UserError, is_user_error

    check = raise_from_vlp(ValueError("batch sizes must be positive"))
    assert is_user_error(check, setting_up=True)
    assert not is_user_error(check, setting_up=False)  # once batches run, a failed check is a bug
    assert not is_user_error(ValueError("from a library, not raised by vlp"), setting_up=True)
    assert is_user_error(FileNotFoundError("data/x"), setting_up=True)
    assert not is_user_error(FileNotFoundError("data/x"), setting_up=False)
    assert not is_user_error(raise_from_vlp(RuntimeError("a bug")), setting_up=True)
    for anywhere in (UserError("bad value"), MisconfigurationException("bad setting")):
        assert is_user_error(anywhere, setting_up=False)
    try:  # jsonargparse's wrapper around a constructor's error is looked through
        raise ValueError("Does not validate against any of the Union subtypes") from check
    except ValueError as wrapped:
        assert not is_user_error(wrapped, setting_up=True)  # raised here, not in jsonargparse
