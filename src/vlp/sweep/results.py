"""A sweep folder's results, read and summarised: the runs of ``<out>/trials.json`` with their
``status.json`` and ``metrics.json`` (formats: ``docs/sweeps.md``), each metric's value per run, each arm's
summary and paired difference against the baseline, the claims' verdicts and the trials without a value.
:mod:`vlp.sweep.report` writes it out.

Besides the metrics of ``metrics.json``, a sweep may compare ``run/minutes``: a run's wall time, its
attempts summed (``status.json``'s ``run_seconds``; for a run of one attempt recorded without it, from
``started`` to ``finished``). It is the time under the sweep's launcher (with ``parallel: 2``, two runs
share the machine), so arms compare fairly only within one sweep."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from vlp.errors import UserError
from vlp.sweep.claims import Verdict, judge, parse_claim
from vlp.sweep.stats import Difference, Summary, difference, summarize
from vlp.sweep.status import run_time, status_from
from vlp.sweep.trials import TRIALS_FILE, place_records

ValueKind = Literal["final", "best"]
VALUE_KINDS: tuple[ValueKind, ...] = ("final", "best")
MODES = ("max", "min")
RUN_MINUTES = "run/minutes"


class MetricLike(Protocol):
    """A metric of the sweep file: its logged name, ``max`` or ``min``, and the stage it is read at
    (``None``: the last stage)."""

    @property
    def name(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def stage(self) -> str | None: ...


class SpecLike(Protocol):
    """What the report reads from a sweep file (:func:`vlp.sweep.spec.load_spec`)."""

    @property
    def name(self) -> str: ...
    @property
    def out(self) -> str | Path | None: ...
    @property
    def metrics(self) -> Sequence[MetricLike]: ...
    @property
    def baseline(self) -> str | None: ...
    @property
    def claims(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Metric:
    """A metric resolved against the sweep folder: ``stage`` is a stage of its trials; ``label`` names it
    in file names (``/`` -> ``-``)."""

    name: str
    mode: str
    stage: str
    label: str


@dataclass(frozen=True)
class Run:
    """One stage of one trial as found on disk; ``state`` is ``missing`` without a ``status.json``."""

    trial: str
    arm: str
    seed: int
    stage: str
    run_dir: Path
    state: str
    detail: str = ""
    metrics: Mapping[str, Any] | None = None
    minutes: float | None = None


@dataclass(frozen=True)
class Row:
    """One arm on one metric: its values by seed, the trials without one, and the summaries."""

    arm: str
    metric: Metric
    values: Mapping[int, float]
    n_missing: int
    summary: Summary
    diff: Difference | None  # against the baseline; None for the baseline itself or without one


@dataclass(frozen=True)
class Issue:
    """A trial stage that gives no value: not done (missing, queued, running, failed) or done without it."""

    trial: str
    stage: str
    state: str
    detail: str


@dataclass(frozen=True)
class Report:
    arms: list[str]
    metrics: list[Metric]
    baseline: str | None
    value: ValueKind
    rows: list[Row]
    verdicts: list[Verdict]
    issues: list[Issue]
    curves: dict[str, dict[str, list[tuple[int, float]]]] = field(
        default_factory=dict
    )  # label -> arm -> curve

    def rows_of(self, metric: Metric) -> list[Row]:
        return [row for row in self.rows if row.metric == metric]


# ---- reading the sweep folder --------------------------------------------------------------------------


def read_json(path: Path) -> tuple[Any, str]:
    """``path``'s JSON, or ``None`` and why not (absent, unreadable)."""
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        return json.loads(path.read_text()), ""
    except (OSError, ValueError) as error:
        return None, f"unreadable {path.name}: {error}"


def read_runs(out: Path) -> list[Run]:
    """Every trial stage of ``<out>/trials.json`` with its state and metrics, read from the folder its
    run is in (a shared run's, for each trial that shares it)."""
    table_path = out / TRIALS_FILE
    table, why = read_json(table_path)
    if not isinstance(table, list):
        reason = why or "not a JSON list"
        raise UserError(f"{table_path}: {reason}; run the sweep first (`python -m vlp sweep run SWEEP.yaml`)")
    return [_read_run(out, entry, table_path) for entry in place_records(table, out)]


def _read_run(out: Path, entry: Any, table_path: Path) -> Run:
    try:
        trial, arm, seed, stage = entry["trial"], entry["arm"], int(entry["seed"]), entry["stage"]
        run_dir = out / entry["run_dir"]
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(
            f"{table_path}: entry {entry!r} lacks trial, arm, seed, stage or run_dir ({error})"
        ) from None
    status, why = read_json(run_dir / "status.json")
    if not isinstance(status, dict):
        return Run(trial, arm, seed, stage, run_dir, "missing", why or "status.json is not an object")
    state = str(status.get("state"))
    exit_code = status.get("exit_code")
    detail = f"exit code {exit_code}" if exit_code not in (None, 0) else ""
    metrics, why = read_json(run_dir / "metrics.json")
    if state == "done" and not isinstance(metrics, dict):
        detail = why or "metrics.json is not an object"
    metrics = metrics if isinstance(metrics, dict) else None
    return Run(trial, arm, seed, stage, run_dir, state, detail, metrics, run_minutes(status))


def run_minutes(status: Mapping[str, Any]) -> float | None:
    """A run's wall time in minutes, its attempts summed (module docstring); ``None`` when unknown."""
    seconds = run_time(status_from(dict(status)))
    return None if seconds is None else seconds / 60


def resolve_metrics(metrics: Sequence[MetricLike], stages: Sequence[str]) -> list[Metric]:
    """The sweep's metrics at their stages (default: the last of ``stages``, in trial order)."""
    if not metrics:
        raise UserError("the sweep file lists no metrics: add metrics: [{name: val/..., mode: max}]")
    names = [metric.name for metric in metrics]
    if len(set(names)) != len(names):
        raise UserError(f"metrics {names}: each metric once")
    resolved = []
    for metric in metrics:
        stage = metric.stage if metric.stage is not None else stages[-1]
        if stage not in stages:
            raise UserError(
                f"metric {metric.name!r}: stage {stage!r} is not in trials.json; its stages are {', '.join(stages)}"
            )
        if metric.mode not in MODES:
            raise UserError(f"metric {metric.name!r}: mode {metric.mode!r} is not max or min")
        resolved.append(Metric(metric.name, metric.mode, stage, file_label(metric.name)))
    return resolved


def file_label(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_.=-" else "-" for c in name)


def metric_value(run: Run, metric: Metric, value: ValueKind) -> tuple[float | None, str]:
    """The run's value of ``metric`` (its last validation's, or the best over its validations by the
    metric's mode), or ``None`` and why."""
    if run.state == "done" and metric.name == RUN_MINUTES:
        if run.minutes is None:
            return None, "no run time in status.json (resumed before run_seconds was recorded)"
        return run.minutes, ""
    if run.state != "done" or run.metrics is None:
        return None, run.detail
    found = (
        run.metrics.get("final", {}).get(metric.name) if value == "final" else best_value(run.metrics, metric)
    )
    if found is None:
        return None, f"no {value} value of {metric.name} in metrics.json"
    if not math.isfinite(float(found)):
        return None, f"{metric.name} is {found}"
    return float(found), ""


def best_value(metrics: Mapping[str, Any], metric: Metric) -> float | None:
    """The best finite value over the validations by the metric's mode; the recorded ``best`` when the
    validations lack the metric."""
    seen = [row.get(metric.name) for row in metrics.get("validations", [])]
    finite = [float(x) for x in seen if x is not None and math.isfinite(float(x))]
    if finite:
        return max(finite) if metric.mode == "max" else min(finite)
    return metrics.get("best", {}).get(metric.name, {}).get("value")


def curve(runs: Sequence[Run], name: str) -> list[tuple[int, float]]:
    """The mean over ``runs`` of ``name`` at each validation step (each step over the runs that have it)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for row in (run.metrics or {}).get("validations", []):
            if name in row and "step" in row and row[name] is not None and math.isfinite(float(row[name])):
                by_step.setdefault(int(row["step"]), []).append(float(row[name]))
    return [(step, sum(values) / len(values)) for step, values in sorted(by_step.items())]


# ---- the report ----------------------------------------------------------------------------------------


def build_report(
    out_dir: Path,
    metrics: Sequence[MetricLike],
    baseline: str | None,
    claims: Sequence[str],
    value: ValueKind = "final",
) -> Report:
    """Read the sweep folder ``out_dir`` and compute every row, verdict and curve of its report."""
    if value not in VALUE_KINDS:
        raise UserError(f"value {value!r} is not final or best")
    runs = read_runs(Path(out_dir))
    if not runs:
        raise UserError(f"{Path(out_dir) / 'trials.json'} lists no trials")
    arms = list(dict.fromkeys(run.arm for run in runs))
    stages = list(dict.fromkeys(run.stage for run in runs))
    resolved = resolve_metrics(metrics, stages)
    if baseline is not None and baseline not in arms:
        raise UserError(f"baseline {baseline!r} is not an arm of the sweep; the arms are {', '.join(arms)}")
    parsed = [parse_claim(text, arms, [metric.name for metric in resolved]) for text in claims]

    rows, curves = [], {}
    for metric in resolved:
        values = {arm: _arm_values(runs, arm, metric, value) for arm in arms}
        for arm in arms:
            n_trials = sum(run.arm == arm and run.stage == metric.stage for run in runs)
            diff = None if baseline in (None, arm) else difference(values[arm], values[baseline])
            summary = summarize(list(values[arm].values()))
            rows.append(Row(arm, metric, values[arm], n_trials - len(values[arm]), summary, diff))
        curves[metric.label] = {arm: curve(_done(runs, arm, metric.stage), metric.name) for arm in arms}
    verdicts = []
    for claim in parsed:
        metric = next(m for m in resolved if m.name == claim.metric)
        left, right = (_arm_values(runs, arm, metric, value) for arm in (claim.left, claim.right))
        verdicts.append(judge(claim, difference(left, right)))
    return Report(arms, resolved, baseline, value, rows, verdicts, _issues(runs, resolved, value), curves)


def _done(runs: Sequence[Run], arm: str, stage: str) -> list[Run]:
    return [run for run in runs if run.arm == arm and run.stage == stage and run.state == "done"]


def _arm_values(runs: Sequence[Run], arm: str, metric: Metric, value: ValueKind) -> dict[int, float]:
    found = {}
    for run in runs:
        if run.arm == arm and run.stage == metric.stage:
            number, _ = metric_value(run, metric, value)
            if number is not None:
                found[run.seed] = number
    return found


def _issues(runs: Sequence[Run], metrics: Sequence[Metric], value: ValueKind) -> list[Issue]:
    """Trial stages not done, and done ones lacking a metric's value."""
    issues = []
    for run in runs:
        if run.state != "done":
            issues.append(Issue(run.trial, run.stage, run.state, run.detail))
            continue
        for metric in metrics:
            if metric.stage == run.stage:
                number, why = metric_value(run, metric, value)
                if number is None:
                    issues.append(Issue(run.trial, run.stage, "done", why))
    return issues
