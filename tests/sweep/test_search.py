"""``search: optuna``: trials asked one batch at a time, run as sweep runs, told the objective read from
metrics.json; the study's file journal lets the same command resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_parts import tiny_recipe, write_yaml

from vlp.sweep.command import run_sweep
from vlp.sweep.search import study
from vlp.sweep.spec import load_spec

pytestmark = pytest.mark.filterwarnings("ignore")
LR = "model.init_args.lr"


def search_spec(tmp_path: Path, shapes: Path, n_trials: int) -> Path:
    recipe = write_yaml(tmp_path / "tiny.yaml", tiny_recipe(shapes, steps=2))
    return write_yaml(
        tmp_path / "search.yaml",
        {
            "name": "tune",
            "recipe": str(recipe),
            "search": {"method": "optuna", "n_trials": n_trials, "sampler": "random", "seed": 3,
                       "space": {LR: {"log_uniform": [1.0e-4, 1.0e-2]}}},
            "metrics": [{"name": "val/itm_loss", "mode": "min"}],
            "launcher": {"kind": "local", "parallel": 2},
            "out": str(tmp_path / "sweep"),
        },
    )  # fmt: skip


def test_dry_run_checks_a_trial_at_the_low_end_of_the_space(tmp_path: Path, tiny_shapes: Path) -> None:
    lines: list[str] = []
    assert run_sweep(search_spec(tmp_path, tiny_shapes, 2), dry_run=True, report=lines.append) is None
    lines = "\n".join(lines).splitlines()
    assert lines[0] == "sweep tune: optuna search of 2 trials; checking a trial's runs"
    assert lines[3].split()[:3] == ["trial_000", "0", "main"] and f"{LR}=0.0001" in lines[3]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_search_runs_and_tells_each_trial_its_metric_then_resumes_to_more_trials(
    tmp_path: Path, tiny_shapes: Path
) -> None:
    spec_path = search_spec(tmp_path, tiny_shapes, 2)
    results = run_sweep(spec_path, report=print)
    assert results == {"trial_000/seed_0": ["done"], "trial_001/seed_0": ["done"]}
    out = tmp_path / "sweep"
    trials = study(load_spec(spec_path), out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        folder = out / f"trial_{trial.number:03d}" / "seed_0" / "main"
        assert trial.value == json.loads((folder / "metrics.json").read_text())["final"]["val/itm_loss"]
        config = (folder / "config.yaml").read_text()
        assert f"lr: {trial.params[LR]}" in config
    assert [r["arm"] for r in json.loads((out / "trials.json").read_text())] == ["trial_000", "trial_001"]
    assert run_sweep(spec_path, report=print) == {}  # n_trials finished: nothing asked
