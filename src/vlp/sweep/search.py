"""Tuning with optuna instead of comparing fixed arms: ``search:`` in a sweep file.

::

    search: {method: optuna, n_trials: 12, sampler: tpe, seed: 0,
             space: {model.init_args.lr: {log_uniform: [1.0e-4, 3.0e-3]}, model.init_args.warmup: {choice: [0.0, 0.1]}}}
    metrics: [{name: val/itm_acc, mode: max}]      # the first is the objective

Ask and tell: optuna proposes a trial's values (``study.ask``), its runs go through the same check, folders
and launcher as any sweep's (arm ``trial_<number>``, one run per seed and stage), and the study is told the
mean over seeds of the objective's final value in ``metrics.json`` (a trial with a failed or missing run is
told it failed). ``parallel`` trials are asked, run and told at a time (local launcher only). The study is
stored in ``<out>/optuna.jsonl`` (optuna's file journal), so re-running the same command resumes it: trials
left running by a stopped sweep are run again (their finished runs skipped, dead ones resumed), then new
trials are asked until ``n_trials`` are finished.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlp.errors import UserError
from vlp.sweep.axes import Arm, parse_distribution, split_key
from vlp.sweep.callback import read_metrics
from vlp.sweep.check import check_runs
from vlp.sweep.spec import SweepSpec
from vlp.sweep.status import read_status
from vlp.sweep.trials import Run, expand, read_records

JOURNAL = "optuna.jsonl"


def study(spec: SweepSpec, out: Path) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    assert spec.search is not None
    search = spec.search
    sampler = (
        optuna.samplers.TPESampler(seed=search.seed)
        if search.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=search.seed)
    )
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    direction = "maximize" if spec.metrics[0].mode == "max" else "minimize"
    return optuna.create_study(
        study_name=spec.name, storage=storage, sampler=sampler, direction=direction, load_if_exists=True
    )


def distributions(spec: SweepSpec) -> dict[str, Any]:
    """The search space as optuna distributions, by key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert spec.search is not None
    made: dict[str, Any] = {}
    for key, value in spec.search.space.items():
        kind, args = parse_distribution(value, f"search.space.{key}")
        if kind == "choice":
            made[key] = CategoricalDistribution(args)
        elif kind == "int_uniform":
            made[key] = IntDistribution(args[0], args[1])
        else:
            made[key] = FloatDistribution(args[0], args[1], log=kind == "log_uniform")
    return made


def arm_name(number: int) -> str:
    return f"trial_{number:03d}"


def arm(number: int, params: dict[str, Any]) -> Arm:
    return Arm(arm_name(number), dict(params))


def first_point(spec: SweepSpec) -> dict[str, Any]:
    """A value of each distribution (its low end, or first choice): what ``--dry-run`` checks."""
    assert spec.search is not None
    point = {}
    for key, value in spec.search.space.items():
        _, args = parse_distribution(value, f"search.space.{key}")
        point[key] = args[0]
    return point


def objective(spec: SweepSpec, runs: list[Run], out: Path) -> float | None:
    """Mean over seeds of the objective's final value, or ``None`` when a run did not give one."""
    metric = spec.metrics[0]
    stage = spec.metric_stage(metric)
    values = []
    for run in runs:
        if run.stage != stage:
            continue
        status = read_status(run.folder(out))
        record = read_metrics(run.folder(out))
        if status is None or status.state != "done" or record is None:
            return None
        value = record["final"].get(metric.name)
        if value is None:
            return None
        values.append(float(value))
    return statistics.fmean(values) if values else None


def run_search(
    spec_path: Path,
    spec: SweepSpec,
    dry_run: bool = False,
    parallel: int | None = None,
    report: Callable[[str], None] = print,
) -> dict[str, list[str]] | None:
    """``sweep run`` of a sweep file with ``search:``."""
    from vlp.sweep.command import launch, prepare_folder, trial_table

    assert spec.search is not None
    if spec.launcher.kind != "local":
        raise UserError(f"{spec_path}: search runs with the local launcher (launcher.kind: local)")
    out = spec.out_dir
    probe = expand(spec, [arm(0, first_point(spec))])
    report(f"sweep {spec.name}: optuna search of {spec.search.n_trials} trials; checking a trial's runs")
    checked = check_runs(probe, out)
    if dry_run:
        report(trial_table(checked, out))
        return None
    out.mkdir(parents=True, exist_ok=True)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    current = study(spec, out)
    space = distributions(spec)
    results: dict[str, list[str]] = {}
    batch = parallel or spec.launcher.parallel or 1
    while True:
        trials = current.get_trials(deepcopy=False)
        pending = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]  # left by a stopped sweep
        remaining = spec.search.n_trials - sum(1 for t in trials if t.state.is_finished())
        if pending:
            asked = pending[:batch]
        elif remaining > 0:
            asked = [current.ask(space) for _ in range(min(batch, remaining))]
        else:
            break
        arms = [arm(t.number, t.params) for t in sorted(asked, key=lambda t: t.number)]
        runs = check_runs(expand(spec, arms), out)
        prepare_folder(spec_path, spec, merged_records(out, [run.record() for run in runs]))
        results.update(launch(spec, runs, out, retry_failed=False, parallel=batch, report=report) or {})
        for trial in asked:
            value = objective(spec, [run for run in runs if run.arm == arm_name(trial.number)], out)
            if value is None:
                current.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                report(f"trial_{trial.number:03d}: failed")
            else:
                current.tell(trial.number, value)
                report(
                    f"trial_{trial.number:03d}: {spec.metrics[0].name} = {value:.4f}  {describe(trial.params)}"
                )
    best = (
        current.best_trial if any(t.value is not None for t in current.get_trials(deepcopy=False)) else None
    )
    if best is not None:
        report(
            f"best: trial_{best.number:03d} {spec.metrics[0].name} = {best.value:.4f}  {describe(best.params)}"
        )
    return results


def merged_records(out: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``trials.json``'s entries with ``records`` added (or replacing those of the same run folder)."""
    merged = {r["run_dir"]: r for r in read_records(out)}
    merged.update({r["run_dir"]: r for r in records})
    return sorted(merged.values(), key=lambda r: (r["arm"], r["seed"]))


def describe(params: dict[str, Any]) -> str:
    return " ".join(f"{split_key(key)[1].rsplit('.', 1)[-1]}={value:.4g}" if isinstance(value, float)
                    else f"{split_key(key)[1].rsplit('.', 1)[-1]}={value}" for key, value in params.items())  # fmt: skip
