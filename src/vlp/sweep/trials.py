"""A sweep's runs: every arm x seed x stage, each with the exact ``fit`` (or ``predict``) command line it runs.

A trial is one arm at one seed; it runs its stages in order, each a run in its own folder
``<out>/<arm>/seed_<seed>/<stage>/`` (its *home*). A stage's overrides are, in order: the sweep's
``overrides``, the stage's own, the arm's (each key without a prefix, or prefixed with this stage's name).
Then the sweep sets ``trainer.default_root_dir`` (the run folder), ``seed_everything`` (the trial's seed),
``model.init_args.init_from`` (the ``last.ckpt`` of the stage named by ``init_from``) and appends the
:class:`~vlp.sweep.callback.MetricsRecord` callback. :meth:`Run.argv` is built once: the pre-launch check
parses exactly it, and the launch runs exactly it.

Shared runs (:class:`Sharing`): a stage run is identified by its run id (the resolved configuration
without seed and folders), its seed and the identity of the stage it starts from. Trial stages of one
identity are one run: it runs in the home of the first trial (in expansion order) that has it, and the
other trials' stage is that run (``shared_with`` names its trial; their later stages start from its
``last.ckpt``). A trial stage that already has a ``status.json`` in its own home (a sweep folder whose
``trials.json`` has no ``shared_with``) keeps its run there (``same_run_as`` names the trial whose run it
duplicates).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from vlp.sweep.axes import Arm, arms, run_overrides
from vlp.sweep.spec import INIT_FROM, SweepSpec
from vlp.sweep.status import STATUS_FILE

CALLBACK = "vlp.sweep.callback.MetricsRecord"
TRIALS_FILE = "trials.json"


def read_records(out: Path) -> list[dict[str, Any]]:
    """The entries of ``<out>/trials.json`` (:meth:`Run.record`), none before the sweep has written it."""
    path = out / TRIALS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


@dataclass(frozen=True)
class Run:
    """One stage of one trial. ``run_dir`` (the folder the run is in) and ``after`` (the folder of the
    stage it starts from) are relative to the sweep folder. :func:`expand` puts each run in its trial's
    home; the check (:func:`vlp.sweep.check.check_runs`) or :func:`place_runs` sets ``run_id`` and moves
    a shared run to its owner's folder (``shared_with``), see :class:`Sharing`."""

    trial: str
    arm: str
    seed: int
    stage: str
    recipe: tuple[str, ...]
    overrides: dict[str, Any]
    run_dir: str
    after: str | None
    modes: dict[str, str] = field(default_factory=dict)
    command: str = "fit"
    run_id: str | None = None
    shared_with: str | None = None
    same_run_as: str | None = None

    @property
    def home(self) -> str:
        """The trial's own folder for this stage, relative to the sweep folder."""
        return f"{self.trial}/{self.stage}"

    def folder(self, out: Path) -> Path:
        return out / self.run_dir

    def argv(self, out: Path) -> list[str]:
        """The options of ``python -m vlp <command>`` for this run (absolute run folders under ``out``)."""
        args = [arg for path in self.recipe for arg in ("--config", path)]
        args += [option(key, value) for key, value in self.overrides.items()]
        args.append(option("trainer.default_root_dir", str(self.folder(out).resolve())))
        args.append(option("seed_everything", self.seed))
        if self.after is not None:
            args.append(option(INIT_FROM, str((out / self.after).resolve() / "checkpoints" / "last.ckpt")))
        callback = {"class_path": CALLBACK, "init_args": {"modes": self.modes}}
        args.append("--trainer.callbacks+=" + json.dumps(callback, sort_keys=True))
        return args

    def record(self) -> dict[str, Any]:
        """The entry of ``trials.json``."""
        return {
            "trial": self.trial,
            "arm": self.arm,
            "seed": self.seed,
            "stage": self.stage,
            "command": self.command,
            "run_id": self.run_id,
            "run_dir": self.run_dir,
            "overrides": self.overrides,
            "recipe": list(self.recipe),
            "after": self.after,
            "shared_with": self.shared_with,
            "same_run_as": self.same_run_as,
        }

    def sharing_text(self) -> str:
        """How the trial has this run: ``-`` (its own), ``shared with TRIAL``, or its own kept apart."""
        if self.shared_with is not None:
            return f"shared with {self.shared_with}"
        if self.same_run_as is not None:
            return f"own: started in this trial's folder (same run as {self.same_run_as})"
        return "-"


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
                overrides = run_overrides(spec.overrides, stage.name, stage.overrides, arm.overrides)
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
                        command=stage.command,
                    )
                )
    return runs


def trials(runs: list[Run]) -> dict[str, list[Run]]:
    """``{trial: its runs in stage order}``, trials in order."""
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.trial, []).append(run)
    return grouped


# ------------------------------------------------------------------------------------------------ sharing


@dataclass(frozen=True)
class Placement:
    """Where a trial stage's run is: ``run_dir``; ``owner``: the home of the run it is when it runs in
    another trial's folder; ``kept_apart_from``: that home when the trial keeps its own started run."""

    run_dir: str
    owner: str | None = None
    kept_apart_from: str | None = None


class Sharing:
    """Assigns trial stages, given in expansion order (a trial's stages in order), to runs.

    A stage's identity is ``(run id, seed, identity of the stage it starts from)``: the run id leaves out
    the seed, and writes the folder of the stage it starts from as that run's id, so the chain before a
    stage is part of its identity through this recursion. The first trial stage of an identity owns the
    run (in its home); a later one shares it, unless its own home already has a ``status.json`` (a run
    started there: a sweep folder whose ``trials.json`` has no ``shared_with``), which it keeps."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.placements: dict[str, Placement] = {}
        self.identities: dict[str, tuple[Any, ...]] = {}
        self.owners: dict[tuple[Any, ...], str] = {}

    def folder(self, home: str) -> str:
        """The run folder of the trial stage whose home is ``home`` (itself before it is placed)."""
        placement = self.placements.get(home)
        return home if placement is None else placement.run_dir

    def place(self, home: str, seed: int, run_id: str | None, after: str | None) -> Placement:
        """Place the trial stage ``home`` with its run id; ``after``: the home of the stage it starts from."""
        if run_id is None or (after is not None and after not in self.identities):
            identity: tuple[Any, ...] = ("unidentified", home)
        else:
            identity = (run_id, seed, self.identities[after] if after is not None else None)
        self.identities[home] = identity
        owner = self.owners.setdefault(identity, home)
        if owner == home:
            placement = Placement(home)
        elif (self.out / home / STATUS_FILE).is_file():
            placement = Placement(home, kept_apart_from=owner)
        else:
            placement = Placement(self.placements[owner].run_dir, owner=owner)
        self.placements[home] = placement
        return placement


def trial_of(home: str) -> str:
    return home.rsplit("/", 1)[0]


def placed(run: Run, run_id: str | None, placement: Placement, runs_by_home: Mapping[str, Run]) -> Run:
    """``run`` as :meth:`Sharing.place` placed it: a shared run is its owner's run (the same command line,
    which runs in the owner's folder) as a stage of this trial."""
    if placement.owner is not None:
        owner = runs_by_home[placement.owner]
        return replace(owner, trial=run.trial, arm=run.arm, stage=run.stage, shared_with=owner.trial)
    same_run_as = None if placement.kept_apart_from is None else trial_of(placement.kept_apart_from)
    return replace(run, run_id=run_id, same_run_as=same_run_as)


def place_runs(runs: list[Run], out: Path, run_id_of: Callable[[Run], str | None]) -> list[Run]:
    """``runs`` (from :func:`expand`, in order) with their run ids, in their folders (:class:`Sharing`).
    ``run_id_of`` gives a run's id (``None``: unknown, the run is not shared); it gets each run in its
    home, starting from the folder where the stage it starts from is."""
    sharing = Sharing(out)
    by_home: dict[str, Run] = {}
    result = []
    for run in runs:
        start = run.after
        if start is not None:
            run = replace(run, after=sharing.folder(start))
        run_id = run_id_of(run)
        run = placed(run, run_id, sharing.place(run.home, run.seed, run_id, start), by_home)
        by_home[run.home] = run
        result.append(run)
    return result


def recorded_ids(out: Path) -> dict[str, str]:
    """``{home: run id}`` of the trial stages in ``<out>/trials.json``."""
    return {
        f"{record['trial']}/{record['stage']}": record["run_id"]
        for record in read_records(out)
        if record.get("run_id")
    }


def place_records(records: list[Any], out: Path) -> list[Any]:
    """``trials.json``'s entries with each run where it is. Entries without ``shared_with`` (each trial
    stage in its home) are placed as :class:`Sharing` does, from their run ids; entries with it, and
    malformed ones (their reader names what is wrong), are returned as they are."""
    if all(isinstance(record, dict) and "shared_with" in record for record in records):
        return records
    try:
        runs = [
            Run(r["trial"], r["arm"], int(r["seed"]), r["stage"], tuple(r.get("recipe") or ()),
                dict(r.get("overrides") or {}), r["run_dir"], r.get("after"), command=r.get("command", "fit"))
            for r in records
        ]  # fmt: skip
        ids = {run.home: r.get("run_id") for run, r in zip(runs, records)}
    except (KeyError, TypeError, ValueError):
        return records
    return [run.record() for run in place_runs(runs, out, lambda run: ids.get(run.home))]
