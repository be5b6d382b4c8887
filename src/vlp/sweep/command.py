"""``python -m vlp sweep run|status|report SWEEP.yaml``.

``run`` expands the sweep file into its runs, parses every run's command line with ``fit``'s parser (one
that does not parse stops the sweep before any run starts, naming the trial and the key), then starts what
is missing: a trial whose stages are all done is skipped, a dead run (its process or job gone) restarts
from its ``last.ckpt``, a failed one only with ``--retry-failed``, a running one is left alone. Trial stages
that are the same run (:class:`vlp.sweep.trials.Sharing`) are one run, in the folder of the first trial
that has it. Re-running the same command is how a sweep is resumed. ``--dry-run`` prints the table of runs
and starts nothing. ``status`` prints each trial stage's state, attempts and final metrics.
"""

from __future__ import annotations

import json
import shutil
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser

from vlp.errors import UserError
from vlp.parse_errors import describe_parse_error, option_strings
from vlp.sweep.axes import arm_names
from vlp.sweep.callback import read_metrics, write_json
from vlp.sweep.check import check_runs, ran_id
from vlp.sweep.launch import ChainJob, StageJob, launch_local, launch_submitit
from vlp.sweep.spec import DEFAULT_STAGE, SweepSpec, load_spec
from vlp.sweep.status import Status, is_dead, read_status, write_status
from vlp.sweep.trials import TRIALS_FILE, Run, expand, place_runs, read_records, recorded_ids, trials

PROG = "python -m vlp sweep"
SPEC_COPY = "sweep.yaml"
JOBS_FOLDER = "jobs"
# Keys of the sweep file that may change between launches of one sweep folder: how runs start, not what runs.
MAY_CHANGE = ("launcher", "metrics", "claims", "baseline")
"""Keys of a sweep file that change how runs are launched or read, never what a run is: they may change
between ``sweep run``s over one folder."""

HELP = f"""usage: {PROG} <command> SWEEP.yaml [options]

Comparative sweeps: the runs of a sweep file (recipes x axes x seeds x stages), launched, resumed and reported.

commands:
  run SWEEP.yaml [--dry-run] [--retry-failed] [--only ARM] [--parallel N]
                 check every run's configuration, then start what is missing (re-run to resume)
  status SWEEP.yaml   each run's state, attempts and final metrics
  report SWEEP.yaml   the comparison table, claims and plots (vlp.sweep.report)

The sweep file's format, folders and files: docs/sweeps.md."""


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Step:
    """What ``run`` does with a trial: ``start`` (its stages from ``stage``), or leave it (``done``,
    ``active``: running elsewhere, ``failed``: needs ``--retry-failed``)."""

    action: str
    stage: str | None = None
    why: str = ""


def plan_trial(runs: Sequence[Run], out: Path, retry_failed: bool, cluster: str | None) -> Step:
    """The step for one trial, from its stages' ``status.json`` (see :mod:`vlp.sweep.status`)."""
    for run in runs:
        folder = run.folder(out)
        status = read_status(folder)
        if status is None:
            return Step("start", run.stage, "new")
        if status.state == "done":
            continue
        if status.state == "failed":
            if retry_failed:
                return Step("start", run.stage, f"failed (exit {status.exit_code}): retried")
            return Step("failed", run.stage, f"failed (exit {status.exit_code}); --retry-failed restarts it")
        if status.state == "queued" and status.job_id is None:
            return Step("start", run.stage, "stopped before its end: resumes")
        if is_dead(status, folder, cluster, out / JOBS_FOLDER):
            return Step("start", run.stage, f"dead ({status.state}, {where(status)}): restarts")
        return Step("active", run.stage, f"{status.state} ({where(status)})")
    return Step("done")


def where(status: Status) -> str:
    parts = [
        f"job {status.job_id}" if status.job_id else "",
        f"pid {status.pid} on {status.host}" if status.pid else "",
    ]
    return ", ".join(p for p in parts if p) or "not started"


# --------------------------------------------------------------------------------------------- folder


def seeds_extended(recorded: Any, given: Any) -> bool:
    """Whether ``given`` keeps every seed of ``recorded`` and adds some: the runs done stay in the sweep,
    so more seeds (a narrower interval) never orphan or re-run one."""
    if not isinstance(recorded, list) or not isinstance(given, list):
        return False
    return set(recorded) < set(given)


def stages_extended(recorded: Any, given: Any) -> bool:
    """Whether ``given`` keeps ``recorded``'s stages (a sweep without ``stages`` has the one stage
    ``main``) and appends some: every run done stays what it was, and the new stages start from them (a
    predict stage measuring trained arms, say)."""
    if recorded is None:
        recorded = [{"name": DEFAULT_STAGE}]
    if not isinstance(recorded, list) or not isinstance(given, list):
        return False
    return len(given) > len(recorded) and given[: len(recorded)] == recorded


def prepare_folder(spec_path: Path, spec: SweepSpec, records: list[dict[str, Any]]) -> None:
    """``<out>/sweep.yaml`` (the sweep file, copied once; another sweep over the same folder is refused,
    naming the keys that differ) and ``<out>/trials.json`` (a run whose configuration changed since it
    started is refused; a recorded id computed another way, e.g. with arguments since added at their
    defaults, is replaced when the configuration the run saved has the new id)."""
    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    copy = out / SPEC_COPY
    given = yaml.safe_load(spec_path.read_text())
    if copy.exists():
        recorded = yaml.safe_load(copy.read_text()) or {}
        differing = differences(recorded, given)
        differing = [key for key in differing if key.split(".")[0] not in MAY_CHANGE]
        extended = {"seeds": seeds_extended, "stages": stages_extended}
        if differing and all(
            key in extended and extended[key](recorded.get(key), given.get(key)) for key in differing
        ):
            shutil.copyfile(spec_path, copy)  # the sweep now has the added seeds or stages
            differing = []
        if differing:
            raise UserError(
                f"{spec_path}: {out} holds another sweep ({copy}); these keys differ: {', '.join(differing)}. "
                "Give this sweep another `out`, or restore the sweep file (seeds may only be added, stages "
                "only appended; launcher, metrics, claims and baseline may change)."
            )
    else:
        shutil.copyfile(spec_path, copy)
    trials_path = out / TRIALS_FILE
    if trials_path.exists():
        old = {r["run_dir"]: r["run_id"] for r in read_records(out)}
        ids = {r["run_dir"]: r["run_id"] for r in records}
        for record in records:
            before = old.get(record["run_dir"])
            if (
                before is not None
                and before != record["run_id"]
                and read_status(out / record["run_dir"])
                and ran_id(out, record, ids) != record["run_id"]
            ):
                raise UserError(
                    f"{out / record['run_dir']}: its configuration changed since it started (run id {before}, "
                    f"now {record['run_id']}: a recipe it reads was edited). Give the sweep another `out`, "
                    "or restore the recipe."
                )
    write_json(trials_path, records)


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two parsed YAML documents."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new), key=str)
        return [d for key in keys for d in differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".") or "(the whole file)"]


# ------------------------------------------------------------------------------------------------ table


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def overrides_text(overrides: dict[str, Any]) -> str:
    return " ".join(f"{key}={json.dumps(value)}" for key, value in overrides.items()) or "-"


def trial_table(runs: list[Run], out: Path) -> str:
    """A row per trial stage (a shared run in each of its trials, in its owner's folder), then how many
    runs the trial stages are, by stage."""
    rows = []
    for run in runs:
        status = read_status(run.folder(out))
        rows.append(
            [run.arm, str(run.seed), run.stage, str(run.run_id), status.state if status else "-",
             str(out / run.run_dir), run.sharing_text(), overrides_text(run.overrides)]
        )  # fmt: skip
    header = ["arm", "seed", "stage", "run_id", "state", "run folder", "shared", "overrides"]
    return table(rows, header) + "\n" + run_count(runs)


def run_count(runs: list[Run]) -> str:
    """``9 runs for 12 trial stages: pretrain 3 for 6, vqa 6 for 6``."""
    stages = list(dict.fromkeys(run.stage for run in runs))
    folders = {stage: {run.run_dir for run in runs if run.stage == stage} for stage in stages}
    trial_stages = {stage: sum(run.stage == stage for run in runs) for stage in stages}
    parts = ", ".join(f"{stage} {len(folders[stage])} for {trial_stages[stage]}" for stage in stages)
    distinct = len({run.run_dir for run in runs})
    return f"{distinct} runs for {len(runs)} trial stages: {parts}"


# -------------------------------------------------------------------------------------------------- run


def selected(spec: SweepSpec, runs: list[Run], only: list[str] | None) -> list[Run]:
    """The runs of the arms ``only`` (all without), with the shared runs those arms' trials need."""
    if not only:
        return runs
    known = arm_names(spec)
    for arm in only:
        if arm not in known:
            raise UserError(f"--only {arm}: not an arm of {spec.name}; the arms are {', '.join(known)}")
    return [run for run in runs if run.arm in only]


def run_sweep(
    spec_path: Path,
    dry_run: bool = False,
    retry_failed: bool = False,
    only: list[str] | None = None,
    parallel: int | None = None,
    report: Callable[[str], None] = print,
) -> dict[str, list[str]] | None:
    """``sweep run``; ``{trial: stage states}`` of what it ran (``None`` when nothing was waited for)."""
    spec = load_spec(spec_path)
    if spec.search is not None:
        from vlp.sweep.search import run_search

        return run_search(spec_path, spec, dry_run=dry_run, parallel=parallel, report=report)
    out = spec.out_dir
    nominal = expand(spec)
    report(f"sweep {spec.name}: checking {len(nominal)} runs")
    all_runs = check_runs(nominal, out)
    runs = selected(spec, all_runs, only)
    if dry_run:
        report(trial_table(runs, out))
        return None
    prepare_folder(spec_path, spec, [run.record() for run in all_runs])
    return launch(spec, runs, out, retry_failed, parallel, report)


def launch(
    spec: SweepSpec,
    runs: list[Run],
    out: Path,
    retry_failed: bool,
    parallel: int | None,
    report: Callable[[str], None],
) -> dict[str, list[str]] | None:
    cluster = spec.launcher.cluster if spec.launcher.kind == "slurm" else None
    chains = []
    for trial, trial_runs in trials(runs).items():
        step = plan_trial(trial_runs, out, retry_failed, cluster)
        if step.action != "start":
            report(f"{step.action:<6s} {trial}{f' ({step.stage}: {step.why})' if step.why else ''}")
            continue
        report(f"to run {trial} from {step.stage}: {step.why}")
        stages = tuple(
            StageJob(run.run_dir, str(run.folder(out).resolve()), tuple(run.argv(out)), run.command)
            for run in trial_runs
        )
        chains.append(ChainJob(trial, stages))
    if not chains:
        report(f"sweep {spec.name}: nothing to run")
        return {}
    if spec.launcher.kind == "local":
        return launch_local(chains, spec.launcher, parallel, report)

    def queued(chain: ChainJob, job_id: str) -> None:
        for stage in chain.stages:
            folder = Path(stage.run_dir)
            status = read_status(folder) or Status()
            if status.state != "done":
                status.state, status.job_id, status.host, status.pid = "queued", job_id, None, None
                write_status(folder, status)

    return launch_submitit(chains, spec.launcher, (out / JOBS_FOLDER).resolve(), queued, report)


# ----------------------------------------------------------------------------------------------- status


def status_lines(spec_path: Path) -> str:
    """A row per trial stage: the state of its run (a shared run in each of its trials, marked), its
    attempts, exit status and final metrics; the first line counts the runs by state. Shared runs are
    found from the run ids of ``trials.json`` (none before the first ``sweep run``)."""
    spec = load_spec(spec_path)
    out = spec.out_dir
    ids = recorded_ids(out)
    runs = place_runs(expand(spec), out, lambda run: ids.get(run.home))
    rows = []
    states: dict[str, str] = {}  # run folder -> state
    cluster = spec.launcher.cluster if spec.launcher.kind == "slurm" else None
    for run in runs:
        folder = run.folder(out)
        status = read_status(folder)
        state = "-" if status is None else status.state
        if status is not None and is_dead(status, folder, cluster, out / JOBS_FOLDER):
            state += " (dead)"
        states[run.run_dir] = state
        record = read_metrics(folder)
        final = record["final"] if record is not None else {}
        shown = [m.name for m in spec.metrics if spec.metric_stage(m) == run.stage] or sorted(final)[:3]
        values = " ".join(f"{name}={final[name]:.4f}" for name in shown if name in final) or "-"
        rows.append(
            [run.trial, run.stage, state, str(status.attempts if status else 0),
             str(status.exit_code) if status and status.exit_code is not None else "-", run.sharing_text(),
             values]
        )  # fmt: skip
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    summary = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    shared = f" ({len(runs)} trial stages)" if len(states) != len(runs) else ""
    header = ["trial", "stage", "state", "attempts", "exit", "shared", "final metrics"]
    return f"sweep {spec.name} in {out}: {len(states)} runs{shared}: {summary}\n" + table(rows, header)


# ---------------------------------------------------------------------------------------------- command


def parse(parser: ArgumentParser, args: list[str], command: str) -> Any:
    try:
        return parser.parse_args(args)
    except ArgumentError as error:
        help_command = f"{PROG} {command} --help"
        raise UserError(describe_parse_error(error, args, option_strings(parser), help_command)) from error


def command_parser(command: str) -> ArgumentParser:
    parser = ArgumentParser(prog=f"{PROG} {command}", allow_abbrev=False, exit_on_error=False)
    parser.add_argument("spec", help="the sweep file (YAML)")
    if command == "run":
        parser.add_argument("--dry-run", action="store_true", help="check and print the runs; start nothing")
        parser.add_argument("--retry-failed", action="store_true", help="restart failed runs too")
        parser.add_argument("--only", action="append", help="run only this arm (repeatable)")
        parser.add_argument("--parallel", type=int, help="local launcher: processes at a time")
    return parser


def run_command(args: list[str]) -> None:
    cfg = parse(command_parser("run"), args, "run")
    if cfg.parallel is not None and cfg.parallel < 1:
        raise UserError(f"--parallel {cfg.parallel}: at least 1")
    results = run_sweep(Path(cfg.spec), cfg.dry_run, cfg.retry_failed, cfg.only, cfg.parallel)
    failed = sorted(trial for trial, states in (results or {}).items() if states and states[-1] == "failed")
    if failed:
        raise SystemExit(
            f"vlp sweep: {len(failed)} trials failed: {', '.join(failed)} (see each run's fit.log)"
        )


def status_command(args: list[str]) -> None:
    cfg = parse(command_parser("status"), args, "status")
    print(status_lines(Path(cfg.spec)))


def report_command(args: list[str]) -> None:
    try:
        from vlp.sweep.report import main as report_main
    except ImportError as error:
        raise UserError(f"sweep report is not available here ({error})") from error
    report_main(args)


def main(args: Sequence[str]) -> None:
    from vlp.tool_commands import run_tool

    runners = {"run": run_command, "status": status_command, "report": report_command}
    run_tool(list(args), HELP, "sweep command", runners)
