"""``metrics.json``: a run's validation metrics as the trainer has them, written by a callback (never parsed
from logs).

::

    {"final": {"val/itm_acc": 0.91, ...},                          the last validation's metrics
     "validations": [{"step": 500, "epoch": 0, "val/itm_acc": 0.6, ...}, ...],
     "best": {"val/itm_acc": {"value": 0.93, "step": 1000}},       per metric with a mode (max|min)
     "complete": true}                                             training reached its end

The file is rewritten atomically (a temporary file renamed into place) at every validation end, by rank 0
only. A resumed run keeps the validations up to its checkpoint's step and replaces the later ones.
``complete`` becomes true when training ends normally (not when a stop request or an error ends it): the
sweep reads it to tell a finished run from one that saved its checkpoint and stopped.

Under ``predict`` (a sweep's predict stage) there is no validation: at the end of the prediction the task's
``predict_metrics`` (``{name: value}``, computed over all its predictions, e.g. ERNIE-ViLG's
``predict/semantic_score``) become ``final``, and the file is ``complete``. A task that computes none
leaves ``final`` empty, so a metric asked of it is reported missing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback

METRICS_FILE = "metrics.json"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file renamed into place."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(partial, path)


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``<run_dir>/metrics.json``, or ``None`` before the run has written one."""
    path = run_dir / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class MetricsRecord(Callback):
    """Writes ``<trainer.default_root_dir>/metrics.json`` (see the module docstring).

    Args:
        modes: ``{metric: "max" | "min"}``: the metrics whose best value (and its step) ``best`` keeps.
        prefix: the metrics recorded: those whose name starts with it.
    """

    def __init__(self, modes: dict[str, Literal["max", "min"]] | None = None, prefix: str = "val/") -> None:
        self.modes = dict(modes or {})
        self.prefix = prefix
        self.path: Path | None = None
        self.record: dict[str, Any] = {"final": {}, "validations": [], "best": {}, "complete": False}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        run_dir = Path(trainer.default_root_dir)
        self.path = run_dir / METRICS_FILE
        record = read_metrics(run_dir)
        if record is not None:
            self.record = record
            self.record["complete"] = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Forget the validations after the step training (re)starts from: they are run again."""
        step = trainer.global_step
        self.record["validations"] = [v for v in self.record["validations"] if v["step"] <= step]
        self._summarise()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {
            name: float(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith(self.prefix) and value.numel() == 1
        }
        entry = {"step": trainer.global_step, "epoch": trainer.current_epoch, **metrics}
        kept = [v for v in self.record["validations"] if v["step"] != trainer.global_step]
        self.record["validations"] = [*kept, entry]
        self._summarise()
        self._write(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["complete"] = True
        self._write(trainer)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = getattr(pl_module, "predict_metrics", None) or {}
        entry = {name: float(value) for name, value in sorted(metrics.items())}
        self.record = {"final": entry, "validations": [], "best": {}, "complete": True}
        for name in self.modes:
            if name in entry and not math.isnan(entry[name]):
                self.record["best"][name] = {"value": entry[name], "step": trainer.global_step}
        self._write(trainer)

    def _summarise(self) -> None:
        validations = self.record["validations"]
        last = validations[-1] if validations else {}
        self.record["final"] = {k: v for k, v in last.items() if k not in ("step", "epoch")}
        best: dict[str, dict[str, float | int]] = {}
        for name, mode in self.modes.items():
            seen = [(v[name], v["step"]) for v in validations if name in v and not math.isnan(v[name])]
            if seen:
                value, step = (max if mode == "max" else min)(seen, key=lambda pair: pair[0])
                best[name] = {"value": value, "step": step}
        self.record["best"] = best

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, self.record)
