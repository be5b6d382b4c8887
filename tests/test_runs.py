"""Run folders: a current last.ckpt, atomic checkpoint writes, logs that are never deleted, resume rules."""

from __future__ import annotations

import csv
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from test_resume import make_data, make_task
from vlp.errors import UserError
from vlp.runs import AtomicCheckpoint, CurrentCheckpoint, Progress, RunLogger, prepare_fit

sys.path.insert(0, str(Path(__file__).parent / "datamodules"))
from shard_helpers import shards_of, write_dataset


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_dataset(root, {"train": shards_of([7, 7, 7, 7]), "val": shards_of([4, 4])})
    return root


def fit(
    run_dir: Path,
    data_root: Path,
    callbacks: list[L.Callback],
    max_steps: int = 12,
    ckpt_path: str | None = None,
) -> L.Trainer:
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=str(run_dir),
        logger=RunLogger(str(run_dir)),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(make_task(), make_data(data_root), ckpt_path=ckpt_path)
    return trainer


def saved_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def test_last_ckpt_is_the_last_step_whatever_the_monitored_metric_does(
    tmp_path: Path, data_root: Path
) -> None:
    """A metric-monitoring checkpoint writes only when the metric improves; last.ckpt follows the steps:
    every 5 steps here, and at the end of training (step 12, no multiple of 5)."""
    run = tmp_path / "run"
    seen: list[int] = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            last = run / "checkpoints" / "last.ckpt"
            if last.exists():
                seen.append(saved_step(last))

    best = AtomicCheckpoint(monitor="val/itm_acc", mode="max", filename="best-{step}")
    fit(run, data_root, [CurrentCheckpoint(every_n_train_steps=5, every_n_minutes=None), best, Watch()])
    assert saved_step(run / "checkpoints" / "last.ckpt") == 12
    assert sorted(set(seen)) == [5, 10]
    assert list((run / "checkpoints").glob("best-step=*.ckpt"))  # the monitored one still works
    assert not list(run.rglob("*.partial")) and not list(run.rglob("version_*"))


def test_a_kill_during_a_write_leaves_the_previous_checkpoint_readable(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"

    class DieWhileWriting(L.Callback):
        """At step 10 the checkpoint write starts (a partial file appears) and the process 'dies'."""

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_step == 9:
                original = trainer.save_checkpoint

                def dying_save(path: str, weights_only: bool = False) -> None:
                    Path(path).write_bytes(b"half a checkpoint")
                    raise KeyboardInterrupt  # the closest an in-process test gets to SIGKILL

                monkeypatch.setattr(trainer, "save_checkpoint", dying_save)
                self.original = original

    with pytest.raises(SystemExit):  # Lightning turns the interrupt into exit(1)
        fit(
            run,
            data_root,
            [DieWhileWriting(), CurrentCheckpoint(every_n_train_steps=5, every_n_minutes=None)],
        )
    assert saved_step(run / "checkpoints" / "last.ckpt") == 5
    assert (run / "checkpoints" / "last.ckpt.partial").read_bytes() == b"half a checkpoint"


def test_the_run_logger_appends_on_resume_and_never_deletes_metrics(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    fit(run, data_root, [CurrentCheckpoint(every_n_train_steps=6, every_n_minutes=None)], max_steps=6)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows if r.get("train/loss")][:3] == [0, 1, 2]
    fit(run, data_root, [CurrentCheckpoint(every_n_train_steps=6, every_n_minutes=None)], ckpt_path="last")
    resumed = list(csv.DictReader((run / "metrics.csv").open()))
    assert resumed[: len(rows)] == [{**row, **{k: "" for k in set(resumed[0]) - set(row)}} for row in rows]
    assert max(int(r["step"]) for r in resumed if r.get("train/loss")) == 11
    assert (run / "hparams.yaml").exists() and (run / "checkpoints" / "last.ckpt").exists()


def test_prepare_fit_resolves_last_by_name_and_refuses_a_new_run_over_an_old_one(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "x"
    with pytest.raises(
        UserError, match=r"no checkpoint to resume in .*runs/x/checkpoints \(looked for last\.ckpt\)"
    ):
        prepare_fit(run, "last")
    assert prepare_fit(run, None) is None  # a new run in an empty (or missing) folder
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert prepare_fit(run, "last") == str(run / "checkpoints" / "last.ckpt")
    with pytest.raises(
        UserError, match=r"already holds a run .*--ckpt_path last.*--trainer\.default_root_dir"
    ):
        prepare_fit(run, None)
    assert prepare_fit(run, "elsewhere.ckpt") == "elsewhere.ckpt"
    (run / "hpc_ckpt_1.ckpt").write_bytes(b"x")  # SLURM's requeue: Lightning resumes it by itself
    assert prepare_fit(run, None) is None


def test_a_directory_checkpoint_left_between_its_two_renames_is_still_found(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "last.ckpt.previous").mkdir(parents=True)
    assert prepare_fit(run, "last") == str(run / "checkpoints" / "last.ckpt.previous")


def test_sigusr1_outside_slurm_saves_and_stops_like_sigterm(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"

    class Preempt(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_step == 7:
                signal.raise_signal(signal.SIGUSR1)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        fit(run, data_root, [Preempt(), CurrentCheckpoint(every_n_train_steps=5, every_n_minutes=None)])
    assert stopped.value.code in (None, 0)
    assert saved_step(run / "checkpoints" / "last.ckpt") == 7
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL and signal.getsignal(signal.SIGTERM) == previous


def test_progress_prints_a_line_per_interval_when_not_on_a_terminal(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    progress = Progress(log_every_seconds=0.0)
    progress._lines = True  # pytest's captured stderr is not a terminal either; set it for clarity
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[progress],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(make_task(), make_data(data_root))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(lines) == 4 and lines[-1].startswith("step 4/4 | loss ")
    assert "steps/s | ETA 0:00" in lines[-1]
    assert "validation at step 4: val/itm_acc" in out
