"""The check before launching: every run's command line parsed by fit's parser, a bad trial stopping the sweep
before anything starts (naming the trial and the key), and run ids (same config on another seed or in another
folder: same id)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweep_parts import COLLATOR, tiny_recipe, write_yaml

from vlp.errors import UserError
from vlp.sweep.check import check_runs, resolved_config
from vlp.sweep.command import run_sweep
from vlp.sweep.spec import parse_spec
from vlp.sweep.trials import expand


@pytest.fixture
def recipe(tmp_path: Path, tiny_shapes: Path) -> Path:
    return write_yaml(tmp_path / "tiny.yaml", tiny_recipe(tiny_shapes))


def test_the_checked_config_is_what_the_run_gets(recipe: Path, tmp_path: Path) -> None:
    spec = parse_spec(
        {"name": "s", "recipe": str(recipe), "axes": [{"grid": {COLLATOR: [False]}}], "seeds": [4]}
    )
    run = expand(spec)[0]
    config = resolved_config(run.argv(tmp_path / "out"))
    assert config["seed_everything"] == 4
    assert config["trainer"]["default_root_dir"] == str((tmp_path / "out" / run.run_dir).resolve())
    assert config["data"]["init_args"]["collator"]["init_args"]["whole_word_masking"] is False
    callbacks = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert callbacks == ["vlp.runs.CurrentCheckpoint", "vlp.sweep.callback.MetricsRecord"]


def test_run_ids_ignore_seed_and_folder_and_follow_the_config(recipe: Path, tmp_path: Path) -> None:
    data = {
        "name": "s",
        "recipe": str(recipe),
        "axes": [{"grid": {COLLATOR: [True, False]}}],
        "seeds": [0, 1],
    }
    runs = expand(parse_spec(data))
    checked = check_runs(runs, tmp_path / "a")
    by_arm = {(r.arm, r.seed): r.run_id for r in checked}
    assert by_arm[("whole_word_masking=true", 0)] == by_arm[("whole_word_masking=true", 1)]
    assert by_arm[("whole_word_masking=true", 0)] != by_arm[("whole_word_masking=false", 0)]
    assert [r.run_id for r in check_runs(runs, tmp_path / "elsewhere")] == [r.run_id for r in checked]
    assert all(r.run_id is not None and len(r.run_id) == 12 and int(r.run_id, 16) >= 0 for r in checked)
    assert [r.run_dir for r in checked] == [r.run_dir for r in runs]  # no two trials run the same thing


def test_a_bad_trial_stops_the_sweep_before_any_run_naming_trial_and_key(
    recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    spec = write_yaml(
        tmp_path / "bad.yaml",
        {
            "name": "bad",
            "recipe": str(recipe),
            "axes": [{"zip": {"names": ["good", "typo"], "model.init_args.lr": [0.001, "fast"]}}],
            "out": str(out),
        },
    )
    with pytest.raises(UserError) as error:
        run_sweep(spec)
    message = str(error.value)
    assert message.startswith("trial typo/seed_0, stage main (typo/seed_0/main): ")
    assert "model.init_args.lr" in message and "no run was started" in message
    assert not out.exists()


def test_a_misspelt_override_gets_a_did_you_mean(recipe: Path, tmp_path: Path) -> None:
    spec = write_yaml(
        tmp_path / "typo.yaml",
        {
            "name": "typo",
            "recipe": str(recipe),
            "overrides": {"trainer.max_step": 2},
            "out": str(tmp_path / "o"),
        },
    )
    with pytest.raises(UserError, match=r"trainer\.max_step=2 \(did you mean --trainer\.max_steps\?\)"):
        run_sweep(spec, dry_run=True)
