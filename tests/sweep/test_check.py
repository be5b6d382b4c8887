"""The check before launching: every run's command line parsed by fit's parser, a bad trial stopping the sweep
before anything starts (naming the trial and the key), and run ids (same config on another seed or in another
folder: same id; arguments at their default left out, so ids survive new defaulted arguments)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sweep_parts import COLLATOR, tiny_recipe, write_yaml

from vlp.errors import UserError
from vlp.sweep.callback import write_json
from vlp.sweep.check import check_runs, config_id, resolved_config
from vlp.sweep.command import prepare_folder, run_sweep
from vlp.sweep.spec import parse_spec
from vlp.sweep.status import Status, write_status
from vlp.sweep.trials import TRIALS_FILE, expand, read_records


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


def test_run_ids_drop_arguments_at_their_default_but_not_none(tmp_path: Path) -> None:
    collator = "vlp.datamodules.collate.PretrainCollator"
    task = "vlp.tasks.PretrainTask"  # its defaults are ObjectiveTask's, through **kwargs

    def run_id_of(config: dict) -> str:
        return config_id(config, tmp_path / "run", None)

    bare = run_id_of({"data": {"class_path": collator, "init_args": {}}, "trainer": {}})
    at_default = {"class_path": collator, "init_args": {"whole_word_masking": False}}
    assert run_id_of({"data": at_default, "trainer": {"check_val_every_n_epoch": 1}}) == bare
    assert run_id_of({"data": {"class_path": collator, "init_args": {"whole_word_masking": True}}}) != bare
    assert run_id_of({"data": at_default, "trainer": {"check_val_every_n_epoch": None}}) != bare
    plain_task = run_id_of({"model": {"class_path": task, "init_args": {}}})
    assert run_id_of({"model": {"class_path": task, "init_args": {"weight_decay": 0.01}}}) == plain_task
    assert run_id_of({"model": {"class_path": task, "init_args": {"weight_decay": 0.02}}}) != plain_task
    # how a resumed fit reads its checkpoint is not what it trains
    assert run_id_of({"model": {"class_path": task}, "ckpt_path": "last", "weights_only": None}) == run_id_of(
        {"model": {"class_path": task}}
    )


def test_a_folder_recorded_with_other_ids_goes_on_when_its_runs_saved_the_planned_config(
    recipe: Path, tmp_path: Path
) -> None:
    # ids computed another way (an older vlp, or arguments added since at their defaults) are replaced
    # when the configuration each run saved gives the planned id; an edited one is still refused
    out = tmp_path / "out"
    data = {"name": "s", "recipe": str(recipe), "seeds": [0], "out": str(out)}
    spec, spec_path = parse_spec(data), write_yaml(tmp_path / "s.yaml", data)
    (run,) = check_runs(expand(spec), out)
    folder = out / run.run_dir
    folder.mkdir(parents=True)
    saved = resolved_config(run.argv(out))
    (folder / "config.yaml").write_text(yaml.safe_dump({**saved, "ckpt_path": None, "weights_only": None}))
    write_status(folder, Status(state="done", attempts=1, exit_code=0))
    write_json(out / TRIALS_FILE, [{**run.record(), "run_id": "0123456789ab"}])
    prepare_folder(spec_path, spec, [run.record()])
    assert [r["run_id"] for r in read_records(out)] == [run.run_id]

    write_json(out / TRIALS_FILE, [{**run.record(), "run_id": "0123456789ab"}])
    saved["model"]["init_args"]["lr"] = 0.5
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match="its configuration changed since it started"):
        prepare_folder(spec_path, spec, [run.record()])


def test_seeds_may_be_added_to_a_started_sweep_but_not_removed(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = {"name": "s", "recipe": str(recipe), "seeds": [0, 1], "out": str(out)}
    spec, spec_path = parse_spec(data), write_yaml(tmp_path / "s.yaml", data)
    prepare_folder(spec_path, spec, [run.record() for run in check_runs(expand(spec), out)])

    more = {**data, "seeds": [0, 1, 2]}
    spec, spec_path = parse_spec(more), write_yaml(tmp_path / "s.yaml", more)
    prepare_folder(spec_path, spec, [run.record() for run in check_runs(expand(spec), out)])
    assert yaml.safe_load((out / "sweep.yaml").read_text())["seeds"] == [0, 1, 2]

    for seeds in ([0, 2], [1], [3, 4, 5, 6]):
        other = {**data, "seeds": seeds}
        spec, spec_path = parse_spec(other), write_yaml(tmp_path / "s.yaml", other)
        with pytest.raises(UserError, match="these keys differ: seeds"):
            prepare_folder(spec_path, spec, [run.record() for run in check_runs(expand(spec), out)])


def test_stages_may_be_appended_to_a_started_sweep_and_report_keys_changed(
    recipe: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    data = {"name": "s", "recipe": str(recipe), "out": str(out)}
    spec, spec_path = parse_spec(data), write_yaml(tmp_path / "s.yaml", data)
    first = check_runs(expand(spec), out)
    prepare_folder(spec_path, spec, [run.record() for run in first])

    more = {
        **data,
        "stages": [{"name": "main"}, {"name": "gen", "command": "predict", "init_from": "main"}],
        "metrics": [  # the main stage's callback now records another metric: the same run
            {"name": "val/itm_acc", "mode": "max", "stage": "main"},
            {"name": "predict/cider", "mode": "max", "stage": "gen"},
        ],
    }
    spec, spec_path = parse_spec(more), write_yaml(tmp_path / "s.yaml", more)
    runs = check_runs(expand(spec), out)
    assert runs[0].run_id == first[0].run_id  # the done run is the same run
    assert runs[1].run_id != runs[0].run_id  # same config, but predict: its command is in its id
    prepare_folder(spec_path, spec, [run.record() for run in runs])
    assert [s["name"] for s in yaml.safe_load((out / "sweep.yaml").read_text())["stages"]] == ["main", "gen"]

    changed = {
        **more,
        "stages": [{"name": "main", "overrides": {"trainer.max_steps": 2}}, *more["stages"][1:]],
    }
    spec, spec_path = parse_spec(changed), write_yaml(tmp_path / "s.yaml", changed)
    with pytest.raises(UserError, match="these keys differ: stages"):
        prepare_folder(spec_path, spec, [run.record() for run in check_runs(expand(spec), out)])
