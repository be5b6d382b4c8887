"""A sweep's runs: every arm x seed x stage, each with the exact ``fit`` command line it runs.

A trial is one arm at one seed; it runs its stages in order, each a run in
``<out>/<arm>/seed_<seed>/<stage>/``. A stage's overrides are, in order: the sweep's ``overrides``, the
stage's own, the arm's (each key without a prefix, or prefixed with this stage's name). Then the sweep sets
``trainer.default_root_dir`` (the run folder), ``seed_everything`` (the trial's seed),
``model.init_args.init_from`` (the ``last.ckpt`` of the stage named by ``init_from``) and appends the
:class:`~vlp.sweep.callback.MetricsRecord` callback. :meth:`Run.argv` is built once: the pre-launch check
parses exactly it, and the launch runs exactly it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlp.sweep.axes import Arm, arms, split_key
from vlp.sweep.spec import SweepSpec

CALLBACK = "vlp.sweep.callback.MetricsRecord"
INIT_FROM = "model.init_args.init_from"
TRIALS_FILE = "trials.json"


def read_records(out: Path) -> list[dict[str, Any]]:
    """The entries of ``<out>/trials.json`` (:meth:`Run.record`), none before the sweep has written it."""
    path = out / TRIALS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


@dataclass(frozen=True)
class Run:
    """One stage of one trial. ``run_dir`` and ``after`` are relative to the sweep folder."""

    trial: str
    arm: str
    seed: int
    stage: str
    recipe: tuple[str, ...]
    overrides: dict[str, Any]
    run_dir: str
    after: str | None
    modes: dict[str, str] = field(default_factory=dict)

    def folder(self, out: Path) -> Path:
        return out / self.run_dir

    def argv(self, out: Path) -> list[str]:
        """The options of ``python -m vlp fit`` for this run (absolute run folders under ``out``)."""
        args = [arg for path in self.recipe for arg in ("--config", path)]
        args += [option(key, value) for key, value in self.overrides.items()]
        args.append(option("trainer.default_root_dir", str(self.folder(out).resolve())))
        args.append(option("seed_everything", self.seed))
        if self.after is not None:
            args.append(option(INIT_FROM, str((out / self.after).resolve() / "checkpoints" / "last.ckpt")))
        callback = {"class_path": CALLBACK, "init_args": {"modes": self.modes}}
        args.append("--trainer.callbacks+=" + json.dumps(callback, sort_keys=True))
        return args

    def record(self, run_id: str) -> dict[str, Any]:
        """The entry of ``trials.json``."""
        return {
            "trial": self.trial,
            "arm": self.arm,
            "seed": self.seed,
            "stage": self.stage,
            "run_id": run_id,
            "run_dir": self.run_dir,
            "overrides": self.overrides,
            "recipe": list(self.recipe),
            "after": self.after,
        }


def option(key: str, value: Any) -> str:
    """``--key=value`` with the value written so that the command line reads it back as it is (YAML):
    a string that YAML would read as something else (``"true"``, ``"1e-3"``) is quoted."""
    if isinstance(value, str) and _reads_back(value):
        return f"--{key}={value}"
    return f"--{key}={json.dumps(value)}"


def _reads_back(text: str) -> bool:
    try:
        return yaml.safe_load(text) == text
    except yaml.YAMLError:
        return False


def expand(spec: SweepSpec, arm_list: list[Arm] | None = None) -> list[Run]:
    """Every run of the sweep, trial by trial (arms in order, then seeds), each trial's stages in order."""
    runs = []
    for arm in arms(spec) if arm_list is None else arm_list:
        for seed in spec.seeds:
            trial = f"{arm.name}/seed_{seed}"
            for stage in spec.stage_list:
                overrides = {**stage_overrides(spec.overrides, stage.name), **stage.overrides}
                overrides.update(stage_overrides(arm.overrides, stage.name))
                after = f"{trial}/{stage.init_from}" if stage.init_from is not None else None
                recipe = tuple(stage.recipe) if isinstance(stage.recipe, list) else (str(stage.recipe),)
                runs.append(
                    Run(
                        trial=trial,
                        arm=arm.name,
                        seed=seed,
                        stage=stage.name,
                        recipe=recipe,
                        overrides=overrides,
                        run_dir=f"{trial}/{stage.name}",
                        after=after,
                        modes=spec.modes(stage.name),
                    )
                )
    return runs


def stage_overrides(overrides: dict[str, Any], stage: str) -> dict[str, Any]:
    """The overrides that apply to ``stage``: unprefixed keys and ``stage:``-prefixed ones (prefix removed)."""
    chosen = {}
    for key, value in overrides.items():
        prefix, dotted = split_key(key)
        if prefix is None or prefix == stage:
            chosen[dotted] = value
    return chosen


def trials(runs: list[Run]) -> dict[str, list[Run]]:
    """``{trial: its runs in stage order}``, trials in order."""
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.trial, []).append(run)
    return grouped
