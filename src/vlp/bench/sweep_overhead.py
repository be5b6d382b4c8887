"""``python -m vlp bench sweep-overhead``: what ``python -m vlp sweep run`` costs on top of the fits it runs.

In a work folder the benchmark writes a small shapes dataset once and a sweep file over the shipped ViLT
pre-training recipe (``configs/vilt/shapes_pretrain.yaml``) cut to a few seconds per fit: ``steps`` training
steps of ``batch_size`` samples, one validation batch at the end, no data workers. The sweep has 2 arms
(``model.init_args.lr``) x 2 seeds = 4 trials and the local launcher with one fit at a time, so each fit has
the machine to itself on both sides. Each repeat times, as subprocesses (wall):

- ``python -m vlp sweep run SWEEP`` into a fresh sweep folder: its start, the check of the 4 runs' command
  lines, the 4 fits, their status and metrics files;
- the same 4 fits by hand: the exact command lines the sweep runs (:meth:`vlp.sweep.trials.Run.argv`,
  :func:`vlp.sweep.launch.fit_command`), into fresh run folders, one after the other, with the environment
  the launcher gives its fits (threads) and each fit's output to its ``fit.log`` as the sweep does;
- ``python -m vlp sweep run SWEEP --dry-run``: the interpreter's start, the imports and the check alone.

The sweep and the by-hand fits alternate which goes first (sweep first on even repeats). Every sweep run
must end ``done`` and every by-hand fit must exit 0 with complete metrics, else the run stops: the timings
would not compare the same work. The table gives medians; the last line printed is
``overhead per trial: S s``, (median sweep - median by hand) / 4.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from vlp.bench.command import command_line, cpu_name, parse_options, publish
from vlp.errors import UserError

TRIALS = 4
LRS = (1.0e-3, 5.0e-4)
SEEDS = (0, 1)


@dataclass
class SweepOverheadConfig:
    """What to measure. The defaults make each fit a few seconds on a laptop CPU.

    Args:
        steps: training steps of each fit (one validation batch after the last).
        batch_size: samples per training batch.
        train_samples: training samples of the shapes dataset (64 px); its other splits are small.
        repeats: timed pairs (sweep, by hand), the order alternating.
        threads: torch threads of each fit (the launcher's ``threads``; ``None``: the CPU's cores).
        recipe: the pre-training recipe the fits run, from the current folder.
        workdir: the work folder (absent or empty; kept). ``None``: a temporary folder, removed at the end.
    """

    steps: int = 20
    batch_size: int = 8
    train_samples: int = 256
    repeats: int = 3
    threads: int | None = None
    recipe: str = "configs/vilt/shapes_pretrain.yaml"
    workdir: str | None = None

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.repeats) < 1:
            raise ValueError("steps, batch_size and repeats must be >= 1")
        if self.train_samples < self.batch_size:
            raise ValueError(
                f"train_samples ({self.train_samples}) must be >= batch_size ({self.batch_size})"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass
class Timings:
    """Wall seconds of each repeat: the sweep, the same fits by hand, the sweep's dry run."""

    sweep: list[float]
    by_hand: list[float]
    dry_run: list[float]

    def overhead(self) -> float:
        """Seconds the sweep adds per trial: the difference of the medians over the trials."""
        return (statistics.median(self.sweep) - statistics.median(self.by_hand)) / TRIALS


# ------------------------------------------------------------------------------------------ work folder


def work_folder(workdir: str | None) -> tuple[Path, bool]:
    """The work folder and whether it is a temporary one (removed at the end). A given folder must be
    absent or empty: the benchmark writes sweep and run folders into it, and overwrites nothing."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="vlp-sweep-overhead-")), True
    folder = Path(workdir).resolve()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"--workdir {workdir}: not an empty folder; give a new or empty one")
    folder.mkdir(parents=True, exist_ok=True)
    return folder, False


def shapes_settings(config: SweepOverheadConfig) -> dict[str, Any]:
    """The shapes generator's settings of the benchmark's dataset (64 px, as the recipe reads)."""
    from vlp.datamodules.synth.scenes import ShapesConfig

    small = max(8, config.batch_size)
    shapes = ShapesConfig(
        resolution=64,
        train_samples=config.train_samples,
        val_samples=small,
        test_samples=small,
        pair_train_samples=small,
        pair_val_samples=small,
        pair_test_samples=small,
        samples_per_shard=64,
        seed=0,
    )
    return asdict(shapes)


def write_dataset(folder: Path, settings: dict[str, Any]) -> Path:
    from vlp.datamodules.synth.scenes import ShapesConfig
    from vlp.datamodules.synth.shapes import write_shapes

    root = folder / "shapes"
    write_shapes(root, ShapesConfig(**settings))
    return root


def sweep_file(
    config: SweepOverheadConfig, recipe: Path, shapes: Path, settings: dict[str, Any], out: Path
) -> dict[str, Any]:
    """The sweep: the recipe cut to ``steps`` steps on the benchmark's dataset, 2 learning rates x 2 seeds,
    one fit at a time."""
    from vlp.sweep.launch import cpu_count

    overrides = {
        "trainer.max_steps": config.steps,
        "trainer.val_check_interval": config.steps,
        "trainer.limit_val_batches": 1,
        "trainer.log_every_n_steps": min(25, config.steps),
        "data.init_args.root": str(shapes),
        "data.init_args.synth": settings,
        "data.init_args.batch_size": config.batch_size,
        "data.init_args.num_workers": 0,
        "data.init_args.shuffle_buffer": config.train_samples,
    }
    return {
        "name": "sweep_overhead",
        "recipe": str(recipe),
        "overrides": overrides,
        "axes": [{"grid": {"model.init_args.lr": list(LRS)}}],
        "seeds": list(SEEDS),
        "metrics": [{"name": "val/itm_acc", "mode": "max"}],
        "launcher": {"kind": "local", "parallel": 1, "threads": config.threads or cpu_count()},
        "out": str(out),
    }


def write_sweep(folder: Path, repeat: int, spec: dict[str, Any]) -> Path:
    path = folder / f"sweep_{repeat}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ timing


def run_logged(command: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Run ``command`` to its end, its output appended to ``log`` as the sweep's launcher logs a fit; its
    exit status."""
    from vlp.sweep.launch import start_logged

    return start_logged(command, log, env).wait()


def sweep_command(spec_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vlp", "sweep", "run", str(spec_path), *extra]


def time_sweep(spec_path: Path, out: Path) -> float:
    """Wall seconds of ``sweep run``; every one of its runs must end ``done``."""
    from vlp.sweep.spec import load_spec
    from vlp.sweep.status import read_status
    from vlp.sweep.trials import expand

    log = out.with_suffix(".log")
    start = time.perf_counter()
    code = run_logged(sweep_command(spec_path), log)
    elapsed = time.perf_counter() - start
    states = {run.run_dir: read_status(run.folder(out)) for run in expand(load_spec(spec_path))}
    if code != 0 or any(status is None or status.state != "done" for status in states.values()):
        ended = ", ".join(f"{run_dir} {s.state if s else 'not started'}" for run_dir, s in states.items())
        raise RuntimeError(
            f"bench sweep-overhead: `sweep run {spec_path}` exited {code} with runs {ended} "
            f"(see {log} and each run's fit.log)"
        )
    return elapsed


def time_by_hand(spec_path: Path, out: Path) -> float:
    """Wall seconds of the sweep's fit command lines run one after the other into folders under ``out``,
    with the environment the local launcher gives its fits; each must finish with complete metrics."""
    from vlp.sweep.launch import LOG_FILE, completed, fit_command, local_slots
    from vlp.sweep.spec import load_spec
    from vlp.sweep.trials import expand

    spec = load_spec(spec_path)
    runs = expand(spec)
    env = {**os.environ, **local_slots(spec.launcher, None)[0]}
    failed = []
    start = time.perf_counter()
    for run in runs:
        folder = run.folder(out)
        if run_logged(fit_command(run.argv(out)), folder / LOG_FILE, env) != 0 or not completed(folder):
            failed.append(str(folder / LOG_FILE))
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"bench sweep-overhead: fits by hand did not finish: see {', '.join(failed)}")
    return elapsed


def time_dry_run(spec_path: Path, folder: Path) -> float:
    start = time.perf_counter()
    code = run_logged(sweep_command(spec_path, "--dry-run"), folder / f"{spec_path.stem}_dry_run.log")
    elapsed = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"bench sweep-overhead: `sweep run {spec_path} --dry-run` exited {code}")
    return elapsed


def measure(config: SweepOverheadConfig, folder: Path, recipe: Path) -> Timings:
    """Write the dataset once, then each repeat: a fresh sweep file and folders, the dry run, and the
    sweep and the by-hand fits in alternating order."""
    settings = shapes_settings(config)
    shapes = write_dataset(folder, settings)
    timings = Timings([], [], [])
    for repeat in range(config.repeats):
        spec_path = write_sweep(
            folder, repeat, sweep_file(config, recipe, shapes, settings, folder / f"sweep_{repeat}")
        )
        timings.dry_run.append(time_dry_run(spec_path, folder))
        order = ("sweep", "by_hand") if repeat % 2 == 0 else ("by_hand", "sweep")
        for side in order:
            if side == "sweep":
                timings.sweep.append(time_sweep(spec_path, folder / f"sweep_{repeat}"))
            else:
                timings.by_hand.append(time_by_hand(spec_path, folder / f"by_hand_{repeat}"))
    return timings


# ------------------------------------------------------------------------------------------------ report


def markdown(config: SweepOverheadConfig, timings: Timings, threads: int, command: str) -> str:
    """A section for benchmarks/RESULTS.md; its last line is ``overhead per trial: S s``."""
    import torch

    def row(what: str, values: list[float], median: float) -> str:
        each = ", ".join(f"{v:.2f}" for v in values)
        return f"| {what} | {median:.2f} | {median / TRIALS:.2f} | {each} |"

    sweep, by_hand = statistics.median(timings.sweep), statistics.median(timings.by_hand)
    differences = [s - h for s, h in zip(timings.sweep, timings.by_hand)]
    dry_run = statistics.median(timings.dry_run)
    lines = [
        f"`{command}`",
        "",
        f"`{config.recipe}` cut to {config.steps} steps of batch {config.batch_size} and one validation "
        f"batch, on {config.train_samples} shapes samples (64 px), no data workers; a sweep of 2 arms "
        f"(`model.init_args.lr` {LRS[0]:g} / {LRS[1]:g}) x 2 seeds, local launcher, one fit at a time with "
        f"{threads} threads, against the same {TRIALS} fit command lines run one after the other by hand; "
        f"wall time of subprocesses, median of {config.repeats} repeats, the order alternating; "
        f"torch {torch.__version__}, {cpu_name()}.",
        "",
        "| what | wall s (median) | per trial s | each repeat (s) |",
        "|---|---|---|---|",
        row(f"`sweep run` ({TRIALS} trials)", timings.sweep, sweep),
        row(f"the same {TRIALS} fits by hand", timings.by_hand, by_hand),
        row("overhead: sweep - by hand", differences, sweep - by_hand),
        row("of which start, imports and check (`sweep run --dry-run`)", timings.dry_run, dry_run),
        "",
        f"overhead per trial: {timings.overhead():.2f} s",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    """Parse the options, time the sweep against the fits by hand, print the table and the overhead last."""
    config, args = parse_options("sweep-overhead", SweepOverheadConfig, __doc__, argv)
    recipe = Path(config.recipe).resolve()
    if not recipe.is_file():
        raise UserError(
            f"--recipe {config.recipe}: no such file; run from the repository root or give --recipe"
        )
    folder, temporary = work_folder(config.workdir)
    try:
        timings = measure(config, folder, recipe)
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    from vlp.sweep.launch import cpu_count

    threads = config.threads or cpu_count()
    publish(markdown(config, timings, threads, command_line("sweep-overhead", list(argv))), args.out)
