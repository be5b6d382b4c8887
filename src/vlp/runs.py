"""Run folders: one stable folder per run, a current ``last.ckpt``, resume that resumes, nothing overwritten.

A run lives in ``trainer.default_root_dir`` (the recipes use ``runs/<name>``)::

    runs/<name>/config.yaml        the resolved recipe (LightningCLI)
    runs/<name>/hparams.yaml       the task's hyperparameters
    runs/<name>/metrics.csv        every logged value, one row per logging step (RunLogger)
    runs/<name>/checkpoints/       last.ckpt (CurrentCheckpoint) and best-step=N.ckpt (AtomicCheckpoint)

:class:`CurrentCheckpoint` keeps ``last.ckpt`` current whatever the monitored metric does: every
``every_n_train_steps`` steps and/or ``every_n_minutes`` minutes, at the end of training, and when the
process is asked to stop (SIGTERM, or SIGUSR1 outside SLURM's auto-requeue, which handles SIGUSR1
itself). Every checkpoint file is written beside its final name and renamed into place, so a kill during a
write leaves the previous checkpoint readable.

:func:`prepare_fit` is what ``python -m vlp fit`` checks before training: ``--ckpt_path last`` names the
run's ``last.ckpt`` exactly (or stops, saying where it looked), and a new run never starts in a folder
that already holds one.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any
from weakref import proxy

import lightning as L
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vlp.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
PARTIAL_SUFFIX = ".partial"
PREVIOUS_SUFFIX = ".previous"


# --------------------------------------------------------------------------------------------- writing


def replace_atomically(partial: Path, target: Path) -> None:
    """Move a finished ``partial`` file or directory to ``target``, replacing what was there.

    A file is one ``os.replace`` (atomic on POSIX). A directory (an FSDP2 checkpoint) cannot be renamed
    over a non-empty one, so the old one first becomes ``<target>.previous``, which
    :func:`last_checkpoint` also reads if a kill fell between the two renames.
    """
    if not partial.is_dir():
        os.replace(partial, target)
        return
    previous = target.with_name(target.name + PREVIOUS_SUFFIX)
    if previous.exists():
        shutil.rmtree(previous) if previous.is_dir() else previous.unlink()
    if target.exists():
        os.replace(target, previous)
    os.replace(partial, target)
    if previous.exists():
        shutil.rmtree(previous) if previous.is_dir() else previous.unlink()


class AtomicCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose files are written as ``<name>.partial`` and renamed into
    place once complete: a kill during a write never leaves a truncated checkpoint under a real name."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        partial = filepath + PARTIAL_SUFFIX
        trainer.save_checkpoint(partial, self.save_weights_only)  # every rank; ends with a barrier
        if trainer.is_global_zero:
            replace_atomically(Path(partial), Path(filepath))
        trainer.strategy.barrier("vlp.runs.AtomicCheckpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class CurrentCheckpoint(AtomicCheckpoint):
    """Keeps ``<run>/checkpoints/last.ckpt`` the newest state of training.

    Args:
        dirpath: where ``last.ckpt`` goes; default ``<trainer.default_root_dir>/checkpoints``.
        every_n_train_steps: save every this many optimiser steps (``None``: not by steps).
        every_n_minutes: save when this many minutes passed since the last save (``None``: not by time);
            rank 0's clock decides for every process.

    It also saves at the end of training and when the process receives SIGTERM (or SIGUSR1 where no
    other handler claims it): Lightning then stops at the next step boundary on every process, and the
    state saved there resumes exactly. A stop requested in the middle of a validation pass keeps the
    previous ``last.ckpt`` (a mid-validation state is not one a run can resume from).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_train_steps: int | None = 200,
        every_n_minutes: float | None = 10.0,
    ) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1 or null, got {every_n_train_steps}")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ValueError(f"every_n_minutes must be > 0 or null, got {every_n_minutes}")
        super().__init__(
            dirpath=dirpath, monitor=None, save_top_k=0, save_last=True, enable_version_counter=False
        )
        self.every_n_steps = every_n_train_steps
        self.every_n_minutes = every_n_minutes
        self._last_save_time = time.monotonic()
        self._own_sigusr1 = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(kind="current")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, CHECKPOINTS)
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save_time = time.monotonic()
        # Lightning turns SIGTERM into a clean stop at the next step boundary (and on_exception below
        # saves there). SIGUSR1 is Lightning's only under SLURM auto-requeue; otherwise it would kill the
        # process, so it is made to mean what SIGTERM means.
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, _as_sigterm)
            self._own_sigusr1 = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        due = self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0
        due = due or trainer.received_sigterm  # asked to stop during this step: save before validating
        if self.every_n_minutes is not None:
            elapsed = time.monotonic() - self._last_save_time >= 60 * self.every_n_minutes
            due = bool(trainer.strategy.broadcast(due or elapsed))
        if due:
            self.save_current(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: ``last.ckpt`` follows training steps, not validation results."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: saved by steps, time, the end of training and stop requests."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self.save_current(trainer)
        self._restore_sigusr1()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        try:
            if not isinstance(exception, SIGTERMException) or self._should_skip_saving_checkpoint(trainer):
                return
            if trainer.validating or trainer.sanity_checking:
                log.warning(
                    "vlp: stop requested during validation; %s keeps the state of step %d",
                    self.last_model_path or "no checkpoint",
                    self._last_global_step_saved,
                )
                return
            self.save_current(trainer)
            log.warning("vlp: stop requested; saved %s at step %d", self.last_model_path, trainer.global_step)
        finally:
            self._restore_sigusr1()

    def save_current(self, trainer: L.Trainer) -> None:
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_save_time = time.monotonic()

    def _restore_sigusr1(self) -> None:
        if self._own_sigusr1:
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            self._own_sigusr1 = False


def _as_sigterm(signum: int, frame: FrameType | None) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


# --------------------------------------------------------------------------------------------- logging


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer without its start-up step that deletes an existing ``metrics.csv``: the
    columns of an existing file are kept, and new rows (and columns) are added to it."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])

    def _check_log_dir_exists(self) -> None:
        """Nothing: an existing metrics.csv is a resumed run's, and new rows are appended to it."""


class RunLogger(CSVLogger):
    """CSV metrics and hyperparameters written into the run folder itself (``<save_dir>/metrics.csv``,
    ``<save_dir>/hparams.yaml``), with no ``version_N`` subfolder. A resumed run appends to
    ``metrics.csv``; the rows of steps logged after the resumed checkpoint's step appear again, the
    resumed run's after the interrupted run's.
    """

    def __init__(self, save_dir: str, flush_logs_every_n_steps: int = 50) -> None:
        super().__init__(save_dir, name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


# --------------------------------------------------------------------------------------------- progress


class Progress(TQDMProgressBar):
    """Lightning's TQDM bar on a terminal (with the optimiser step out of ``max_steps``); when the
    output is not a terminal (a log file, CI, SLURM), one line every ``log_every_seconds`` instead:
    step, loss, steps/s and the time left, and one line per validation with its metrics."""

    def __init__(self, refresh_rate: int = 5, log_every_seconds: float = 30.0) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.log_every_seconds = log_every_seconds
        self._lines = not sys.stderr.isatty()
        self._started = self._last_line = 0.0
        self._start_step = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._lines:
            self.disable()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started = self._last_line = time.monotonic()
        self._start_step = trainer.global_step

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        return {"step": f"{trainer.global_step}/{total}" if total else trainer.global_step, **metrics}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        now = time.monotonic()
        if self._lines and now - self._last_line >= self.log_every_seconds:
            self._last_line = now
            self._print(trainer, self.summary(trainer, pl_module, now))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._lines and not trainer.sanity_checking:
            values = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            text = "  ".join(f"{k} {float(v):.4f}" for k, v in sorted(values.items()))
            self._print(trainer, f"validation at step {trainer.global_step}: {text}")

    def summary(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float) -> str:
        steps = trainer.global_step - self._start_step
        rate = steps / max(now - self._started, 1e-9)
        parts = [f"step {trainer.global_step}" + (f"/{trainer.max_steps}" if trainer.max_steps > 0 else "")]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        parts.append(f"{rate:.2f} steps/s")
        if trainer.max_steps > 0 and rate > 0:
            left = (trainer.max_steps - trainer.global_step) / rate
            parts.append(f"ETA {int(left // 60)}:{int(left % 60):02d}")
        return " | ".join(parts)

    @staticmethod
    def _print(trainer: L.Trainer, line: str) -> None:
        if trainer.is_global_zero:
            print(line, flush=True)


# --------------------------------------------------------------------------------------------- checks


def last_checkpoint(run_dir: Path) -> Path | None:
    """The run's current checkpoint: ``checkpoints/last.ckpt``, else the ``.previous`` one a kill between
    the two renames of a directory checkpoint can leave, else ``None``."""
    folder = run_dir / CHECKPOINTS
    for candidate in (folder / LAST, folder / (LAST + PREVIOUS_SUFFIX)):
        if candidate.exists():
            return candidate
    return None


def prepare_fit(run_dir: str | os.PathLike[str], ckpt_path: str | None) -> str | None:
    """The checkpoint a ``fit`` starts from, after the run-folder rules; raises :class:`UserError`.

    - ``ckpt_path="last"``: the run folder's ``checkpoints/last.ckpt``, by name (never the newest file of
      some glob); none there is an error naming the folder.
    - no ``ckpt_path`` in a folder that already holds a run (a checkpoint or ``metrics.csv``): an error,
      since a new run would mix its logs and checkpoints into the old one's. SLURM's auto-requeue
      checkpoints (``hpc_ckpt_*.ckpt``) are Lightning's to resume and pass.
    - any other ``ckpt_path``: returned as given.
    """
    run = Path(run_dir)
    if ckpt_path == "last":
        found = last_checkpoint(run)
        if found is None:
            raise UserError(
                f"--ckpt_path last: no checkpoint to resume in {run / CHECKPOINTS} (looked for {LAST}). "
                "Start a new run without --ckpt_path, or give the path of a checkpoint."
            )
        return str(found)
    if ckpt_path is None and not any(run.glob("hpc_ckpt_*.ckpt")):
        held = [p for p in (last_checkpoint(run), run / "metrics.csv") if p is not None and p.exists()]
        held += sorted((run / CHECKPOINTS).glob("*.ckpt")) if not held else []
        if held:
            raise UserError(
                f"{run} already holds a run ({held[0]}). Resume it with --ckpt_path last, or start a new "
                f"run in another folder with --trainer.default_root_dir=runs/<new name>; vlp never writes "
                "a new run over an old one."
            )
    return ckpt_path
