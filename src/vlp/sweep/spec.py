"""The sweep file: a YAML file parsed by jsonargparse into the typed dataclasses below, so a misspelt key or a
value of the wrong type is refused naming it.

::

    name: vilt_wwm
    recipe: configs/vilt/shapes_pretrain.yaml      # or a list, merged left to right like several --config
    overrides: {trainer.max_steps: 1500}           # every trial
    axes:                                          # combined as a product, in order
      - grid: {data.init_args.collator.init_args.whole_word_masking: [true, false]}
      - zip: {names: [patch, cnn], model.init_args.model: [configs/model/vilt_shapes_p16.yaml, configs/model/vilt_cnn_shapes.yaml]}
      - random: {n: 4, seed: 0, space: {model.init_args.lr: {log_uniform: [1.0e-4, 3.0e-3]}}}
    seeds: [0, 1, 2]
    stages:                                        # optional; default: one stage "main", the recipe
      - {name: pretrain}
      - {name: vqa, recipe: configs/vilt/shapes_vqa.yaml, init_from: pretrain}
      - {name: answers, command: predict, init_from: vqa}   # a stage may predict instead of fit
    metrics: [{name: val/vqa_score, mode: max, stage: vqa}]
    baseline: whole_word_masking=true
    claims: ["whole_word_masking=true > whole_word_masking=false on val/vqa_score"]
    launcher: {kind: local, parallel: 2}
    out: sweeps/vilt_wwm

Paths (``recipe``, ``out``, path values of overrides) are relative to the folder the sweep runs from (the
repository root), as on ``python -m vlp fit``'s command line.

Keys of ``overrides`` and of the axes are recipe keys as on the command line (``model.init_args.lr``). A key
applies to every stage; ``STAGE:key`` (``pretrain:data.init_args.collator.init_args.whole_word_masking``)
applies to that stage only. Every stage's configuration is parsed before anything runs, so a key a stage's
recipe does not have stops the sweep, naming the trial, the stage and the key.

Axes: ``grid`` is every combination of its keys' values; ``zip`` pairs the i-th values of its keys (all of
one length), with optional ``names``; ``random`` draws ``n`` points from ``space`` with its own ``seed``
(distributions ``uniform: [lo, hi]``, ``log_uniform: [lo, hi]``, ``int_uniform: [lo, hi]`` (both ends
included), ``choice: [a, b, ...]``; drawn floats are rounded to 4 significant digits, so an arm's name
is its values). An arm is one point of the product of all axes; without axes the sweep has one arm,
``base``.
"""

from __future__ import annotations

import copy
import difflib
import re
from argparse import ArgumentError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentParser

from vlp.errors import UserError
from vlp.sweep.axes import arms, check_keys, parse_distribution, run_overrides

DEFAULT_STAGE = "main"
INIT_FROM = "model.init_args.init_from"
STAGE_NAME = re.compile(r"^[a-z0-9_]+$")


@dataclass
class Stage:
    """One step of a trial's chain. ``recipe`` defaults to the sweep's; ``init_from`` names an earlier
    stage: this stage's ``model.init_args.init_from`` is then that stage's ``checkpoints/last.ckpt``.
    ``command``: ``fit`` trains; ``predict`` runs ``python -m vlp predict`` with the weights of its
    ``init_from`` stage, or of the checkpoint its overrides (or an axis) give as
    ``model.init_args.init_from`` in every arm, and records the metrics the task computes over its predictions
    (``predict/<name>`` in ``metrics.json``, e.g. ERNIE-ViLG's ``predict/semantic_score``): sampling
    settings are then an axis like any other, and a trained arm is measured by what it generates."""

    name: str
    recipe: str | list[str] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    command: Literal["fit", "predict"] = "fit"


@dataclass
class Metric:
    """A metric the sweep compares: a key of ``metrics.json`` (``val/vqa_score``), whether higher
    (``max``) or lower (``min``) is better, and the stage that reports it (default: the last)."""

    name: str
    mode: Literal["max", "min"] = "max"
    stage: str | None = None


@dataclass
class Launcher:
    """How the runs are started.

    ``kind: local``: a queue of ``parallel`` processes on this machine (default: one per GPU, else 1), each
    with ``threads`` torch threads (default: the CPU cores split between them) or its own GPU.

    ``kind: slurm``: one SLURM array job through submitit; a task runs one trial's stages in order.
    ``cluster: local`` runs the same jobs as local processes (submitit's local executor). Preemption and
    time limits are Lightning's SLURM auto-requeue: SLURM sends SIGUSR1 ``signal_delay_s`` seconds before
    the end, Lightning saves ``hpc_ckpt_N.ckpt`` and requeues the job, which resumes by itself. ``wait``:
    block until every job ends (default: only for ``cluster: local``).
    """

    kind: Literal["local", "slurm"] = "local"
    parallel: int | None = None
    threads: int | None = None
    cluster: Literal["slurm", "local"] = "slurm"
    partition: str | None = None
    time_min: int = 60
    array_parallelism: int = 16
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    signal_delay_s: int = 90
    wait: bool | None = None
    setup: list[str] = field(default_factory=list)
    additional_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Search:
    """Tuning instead of ablation: optuna's ask-and-tell over ``space`` (the distributions of ``random``
    axes) for ``n_trials`` trials, told the sweep's first metric; the study lives in ``<out>/optuna.jsonl``."""

    method: Literal["optuna"] = "optuna"
    n_trials: int = 10
    space: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0


@dataclass
class SweepSpec:
    name: str
    recipe: str | list[str]
    overrides: dict[str, Any] = field(default_factory=dict)
    axes: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    stages: list[Stage] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    baseline: str | None = None
    claims: list[str] = field(default_factory=list)
    launcher: Launcher = field(default_factory=Launcher)
    search: Search | None = None
    out: str | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out if self.out is not None else f"sweeps/{self.name}")

    @property
    def stage_list(self) -> list[Stage]:
        """The stages, each with its recipe as a list (the sweep's where the stage names none)."""
        stages = self.stages or [Stage(DEFAULT_STAGE)]
        return [
            Stage(
                s.name,
                as_list(s.recipe if s.recipe is not None else self.recipe),
                s.overrides,
                s.init_from,
                s.command,
            )
            for s in stages
        ]

    def metric_stage(self, metric: Metric) -> str:
        return metric.stage if metric.stage is not None else self.stage_list[-1].name

    def modes(self, stage: str) -> dict[str, str]:
        """``{metric name: max|min}`` of the metrics reported by ``stage``."""
        return {m.name: m.mode for m in self.metrics if self.metric_stage(m) == stage}


def as_list(recipe: str | list[str]) -> list[str]:
    return [recipe] if isinstance(recipe, str) else list(recipe)


# --------------------------------------------------------------------------------------------- loading


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; a :class:`~vlp.errors.UserError` naming the file and key otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"sweep file {path}: not valid YAML: {error}") from None
    return parse_spec(data, str(path))


def parse_spec(data: Any, where: str = "sweep file") -> SweepSpec:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of keys (name, recipe, axes, ...), got {data!r}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SweepSpec, "spec")
    try:
        # parse a copy: jsonargparse rewrites lists of dataclasses in place ({class_path, init_args})
        spec: SweepSpec = parser.instantiate(parser.parse_object({"spec": copy.deepcopy(data)})).spec
    except ArgumentError as error:
        raise UserError(f"{where}: {_describe(error, data)}") from None
    validate(spec, where)
    return spec


def _describe(error: ArgumentError, data: dict[str, Any]) -> str:
    """jsonargparse's error as one line, with a "did you mean" for a misspelt top-level key."""
    text = " ".join(str(error).split())
    unknown = re.search(r"does not accept option '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        fields = list(SweepSpec.__dataclass_fields__)
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {key!r}{hint}; the keys are {', '.join(fields)}"
    return text.replace('Parser key "spec.', 'key "').replace("'spec.", "'")


def validate(spec: SweepSpec, where: str) -> None:
    """The checks a dataclass type cannot express: names, stages, axes, metrics, claims, launcher."""

    def fail(message: str) -> None:
        raise UserError(f"{where}: {message}")

    if not STAGE_NAME.match(spec.name):
        fail(f"name {spec.name!r}: use lower-case letters, digits and '_'")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        fail(f"seeds {spec.seeds}: give at least one seed, each once")
    stages = [s.name for s in spec.stage_list]
    predicts = {s.name for s in spec.stage_list if s.command == "predict"}
    for index, stage in enumerate(spec.stage_list):
        if not STAGE_NAME.match(stage.name) or stage.name in stages[:index]:
            fail(f"stages[{index}].name {stage.name!r}: stage names are distinct, of [a-z0-9_]")
        if stage.init_from is not None and stage.init_from not in stages[:index]:
            fail(
                f"stages[{index}].init_from {stage.init_from!r}: name an earlier stage ({', '.join(stages[:index]) or 'none'})"
            )
        if stage.init_from in predicts:
            fail(
                f"stages[{index}].init_from {stage.init_from!r} is a predict stage, which writes no checkpoint"
            )
        check_keys(stage.overrides, stages, f"{where}: stages[{index}].overrides", prefixes=False)
    check_keys(spec.overrides, stages, f"{where}: overrides")
    arm_list = arms(spec, where)
    names = [arm.name for arm in arm_list]
    for index, stage in enumerate(spec.stage_list):
        if stage.command != "predict" or stage.init_from is not None:
            continue
        for arm in arm_list:  # the stage's weights then come from a checkpoint every arm must give
            if (
                run_overrides(spec.overrides, stage.name, stage.overrides, arm.overrides).get(INIT_FROM)
                is None
            ):
                fail(
                    f"stages[{index}] ({stage.name}) predicts, from no weights in arm {arm.name}: name the "
                    f"stage whose weights it uses (init_from), or a checkpoint ({INIT_FROM} in overrides)"
                )
    metric_names = [m.name for m in spec.metrics]
    for index, metric in enumerate(spec.metrics):
        if metric.stage is not None and metric.stage not in stages:
            fail(f"metrics[{index}].stage {metric.stage!r}: the stages are {', '.join(stages)}")
    if len(set(metric_names)) != len(metric_names):
        fail(f"metrics {metric_names}: each metric once")
    if spec.baseline is not None and spec.baseline not in names:
        fail(f"baseline {spec.baseline!r} is not an arm; the arms are {', '.join(names)}")
    from vlp.sweep.claims import parse_claim

    for claim in spec.claims:
        try:
            parse_claim(claim, names, metric_names)
        except UserError as error:
            fail(f"claims: {error}")
    check_launcher(spec.launcher, where)
    if spec.search is not None:
        if spec.axes:
            fail("search and axes: a sweep either tunes (search) or compares arms (axes), not both")
        if not spec.metrics:
            fail("search: needs metrics (the first is the objective)")
        if spec.search.n_trials < 1:
            fail(f"search.n_trials {spec.search.n_trials}: at least 1")
        check_keys(spec.search.space, stages, f"{where}: search.space")
        for key, distribution in spec.search.space.items():
            parse_distribution(distribution, f"{where}: search.space.{key}")


def check_launcher(launcher: Launcher, where: str) -> None:
    for name in ("parallel", "threads", "array_parallelism", "time_min"):
        value = getattr(launcher, name)
        if value is not None and value < 1:
            raise UserError(f"{where}: launcher.{name} {value}: at least 1")
    if launcher.kind == "local":
        slurm_only = [
            name for name in ("partition", "cpus_per_task", "mem_gb") if getattr(launcher, name) is not None
        ] + [name for name in ("setup", "additional_parameters") if getattr(launcher, name)]
        if slurm_only:
            raise UserError(f"{where}: launcher.{slurm_only[0]} is for kind: slurm (this launcher is local)")
