"""MetricsRecord: metrics.json from the trainer's metrics at each validation end (rank 0, atomically), the
best value per mode, a resumed run's later validations replaced, and ``complete`` at a normal end only."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from vlp.sweep.callback import MetricsRecord


def trainer(folder: Path, step: int, zero: bool = True, **metrics: float) -> Any:
    values = {name.replace("__", "/"): torch.tensor(value) for name, value in metrics.items()}
    values["train/loss"] = torch.tensor(9.0)  # not a validation metric: not recorded
    return SimpleNamespace(
        default_root_dir=str(folder),
        callback_metrics=values,
        global_step=step,
        current_epoch=step // 10,
        sanity_checking=False,
        is_global_zero=zero,
    )


def validate(callback: MetricsRecord, folder: Path, step: int, **metrics: float) -> dict[str, Any]:
    t = trainer(folder, step, **metrics)
    callback.on_validation_end(t, None)
    return json.loads((folder / "metrics.json").read_text())


def test_validations_final_and_best_by_mode(tmp_path: Path) -> None:
    callback = MetricsRecord(modes={"val/acc": "max", "val/nll": "min"})
    callback.setup(trainer(tmp_path, 0), None, "fit")
    validate(callback, tmp_path, 5, val__acc=0.5, val__nll=2.0)
    validate(callback, tmp_path, 10, val__acc=0.75, val__nll=2.5)
    record = validate(callback, tmp_path, 15, val__acc=0.25, val__nll=1.5)
    assert record["validations"] == [
        {"step": 5, "epoch": 0, "val/acc": 0.5, "val/nll": 2.0},
        {"step": 10, "epoch": 1, "val/acc": 0.75, "val/nll": 2.5},
        {"step": 15, "epoch": 1, "val/acc": 0.25, "val/nll": 1.5},
    ]
    assert record["final"] == {"val/acc": 0.25, "val/nll": 1.5}
    assert record["best"] == {"val/acc": {"value": 0.75, "step": 10}, "val/nll": {"value": 1.5, "step": 15}}
    assert record["complete"] is False
    callback.on_train_end(trainer(tmp_path, 15), None)
    assert json.loads((tmp_path / "metrics.json").read_text())["complete"] is True
    assert not list(tmp_path.glob("*.partial"))


def test_a_resumed_run_keeps_validations_up_to_its_step_and_redoes_the_rest(tmp_path: Path) -> None:
    first = MetricsRecord(modes={"val/acc": "max"})
    first.setup(trainer(tmp_path, 0), None, "fit")
    validate(first, tmp_path, 5, val__acc=0.5)
    validate(first, tmp_path, 10, val__acc=0.875)  # after the checkpoint of step 8: lost on resume
    resumed = MetricsRecord(modes={"val/acc": "max"})
    resumed.setup(trainer(tmp_path, 8), None, "fit")
    resumed.on_train_start(trainer(tmp_path, 8), None)
    record = validate(resumed, tmp_path, 10, val__acc=0.625)
    assert [v["step"] for v in record["validations"]] == [5, 10]
    assert record["best"] == {"val/acc": {"value": 0.625, "step": 10}}


def test_sanity_checks_and_other_ranks_write_nothing(tmp_path: Path) -> None:
    callback = MetricsRecord()
    callback.setup(trainer(tmp_path, 0), None, "fit")
    sanity = trainer(tmp_path, 0, val__acc=0.1)
    sanity.sanity_checking = True
    callback.on_validation_end(sanity, None)
    callback.on_validation_end(trainer(tmp_path, 3, zero=False, val__acc=0.2), None)
    assert not (tmp_path / "metrics.json").exists()


def test_a_prediction_records_the_tasks_predict_metrics_as_final_and_complete(tmp_path: Path) -> None:
    callback = MetricsRecord(modes={"predict/semantic_score": "max", "predict/shapes_fd": "min"})
    callback.setup(trainer(tmp_path, 0), None, "predict")
    task = SimpleNamespace(predict_metrics={"predict/semantic_score": 0.25, "predict/cider": 1.5})
    callback.on_predict_end(trainer(tmp_path, 0), task)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record == {
        "final": {"predict/cider": 1.5, "predict/semantic_score": 0.25},
        "validations": [],
        "best": {"predict/semantic_score": {"value": 0.25, "step": 0}},  # shapes_fd: not computed
        "complete": True,
    }
    callback.on_predict_end(trainer(tmp_path, 0), SimpleNamespace())  # a task that computes none
    assert json.loads((tmp_path / "metrics.json").read_text())["final"] == {}
