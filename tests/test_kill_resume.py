"""Kill a real ``python -m vlp fit`` and resume it with ``--ckpt_path last``: the per-step losses, the
validation metrics and the final weights equal an uninterrupted run's bit for bit.

Three runs of the default recipe, shrunk: one uninterrupted; one killed with SIGKILL after its step-4
checkpoint (it is held at step 5, so step 5 is lost and redone); one sent SIGTERM at step 5, which
saves and exits cleanly. The data folder is generated once and shared.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vlp.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/vilt/shapes_pretrain.yaml"
PARTS = Path(__file__).parent / "cli_parts"
MAX_STEPS = 12
HOLD_STEP = 5  # not a validation step: a stop asked for during validation keeps the step before

OVERLAY = f"""
seed_everything: 0
trainer:
  max_steps: {MAX_STEPS}
  val_check_interval: 6
  limit_val_batches: 2
  log_every_n_steps: 1
  precision: 32-true
  callbacks:
    - class_path: vlp.runs.CurrentCheckpoint
      init_args: {{every_n_train_steps: 4, every_n_minutes: null}}
data:
  init_args:
    synth: {{train_samples: 96, val_samples: 32, test_samples: 16, pair_train_samples: 4, pair_val_samples: 4,
             pair_test_samples: 4, samples_per_shard: 16}}
    batch_size: 8
    num_workers: 2
    shuffle_buffer: 16
model:
  init_args:
    model:
      init_args:
        encoder: {{init_args: {{depth: 2}}}}
"""

pytestmark = pytest.mark.timeout(600)


def command(tmp: Path, run: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vlp", "fit", "--config", str(RECIPE), "--config", str(tmp / "overlay.yaml"),
        f"--trainer.default_root_dir={tmp / 'runs' / run}", f"--data.init_args.root={tmp / 'data'}", *extra,
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONPATH": str(PARTS)}


def hold(tmp: Path, run: str) -> str:
    marker = tmp / f"{run}.held"
    spec = {"class_path": "run_control.HoldAt", "init_args": {"step": HOLD_STEP, "marker": str(marker)}}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def start_and_stop(tmp: Path, run: str, signum: int) -> subprocess.CompletedProcess[str]:
    """Start a run held at HOLD_STEP, send ``signum`` once it is held, and wait for it to end."""
    log = (tmp / f"{run}.log").open("w")
    process = subprocess.Popen(
        command(tmp, run, hold(tmp, run)), cwd=tmp, env=environment(), stdout=log, stderr=log, text=True
    )
    marker = tmp / f"{run}.held"
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), (tmp / f"{run}.log").read_text()[-3000:]
    process.send_signal(signum)
    code = process.wait(timeout=120)
    log.close()
    return subprocess.CompletedProcess(process.args, code, (tmp / f"{run}.log").read_text(), "")


def run_to_end(tmp: Path, run: str, *extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command(tmp, run, *extra), cwd=tmp, env=environment(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(run_dir: Path) -> dict[tuple[int, str], str]:
    """Every logged value by (step, name); a step logged twice (before a kill, and again after the
    resume) keeps the later, resumed value."""
    values: dict[tuple[int, str], str] = {}
    with (run_dir / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            for name, value in row.items():
                if name != "step" and value != "":
                    values[int(row["step"]), name] = value
    return values


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == MAX_STEPS
    return checkpoint["state_dict"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("kill_resume")
    (tmp / "overlay.yaml").write_text(OVERLAY)
    run_to_end(tmp, "straight")
    return tmp


def assert_same_run(tmp: Path, resumed: str) -> None:
    expected, got = metrics(tmp / "runs" / "straight"), metrics(tmp / "runs" / resumed)
    losses = sorted(step for step, name in expected if name == "train/loss")
    assert losses == list(range(MAX_STEPS))
    assert got == expected  # every loss and validation metric, as the same decimal string: bit for bit
    assert any(name == "val/itm_acc" for _, name in expected)
    straight, other = weights(tmp / "runs" / "straight"), weights(tmp / "runs" / resumed)
    assert sorted(straight) == sorted(other)
    for name, value in straight.items():
        assert torch.equal(other[name], value), name


def test_sigkill_after_a_checkpoint_then_resume_last_is_the_uninterrupted_run(runs: Path) -> None:
    killed = start_and_stop(runs, "killed", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    last = torch.load(runs / "runs/killed/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4  # the periodic checkpoint; step 5 is lost
    resumed = run_to_end(runs, "killed", "--ckpt_path", "last")
    assert "Restoring states from the checkpoint path" in resumed.stderr
    assert_same_run(runs, "killed")


def test_sigterm_saves_exits_cleanly_and_resumes_exactly(runs: Path) -> None:
    stopped = start_and_stop(runs, "stopped", signal.SIGTERM)
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    last = torch.load(runs / "runs/stopped/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == HOLD_STEP  # saved where it was stopped, not at the last periodic step
    run_to_end(runs, "stopped", "--ckpt_path", "last")
    assert_same_run(runs, "stopped")


def refused(runs: Path, run: str, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """``vlp fit`` of ``run`` in this process (the refusals come before any training): its stderr, after
    checking that it exits with the user-error code 2."""
    argv = command(runs, run, *extra)[3:]  # after "python -m vlp"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_resume_last_without_a_checkpoint_names_the_folder_and_trains_nothing(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stderr = refused(runs, "never", capsys, "--ckpt_path", "last")
    assert "no checkpoint to resume in" in stderr and "runs/never/checkpoints" in stderr
    assert "Traceback" not in stderr
    assert not (runs / "runs" / "never" / "metrics.csv").exists()


def test_a_new_run_over_a_finished_one_is_refused(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (runs / "runs/straight/metrics.csv").read_bytes()
    stderr = refused(runs, "straight", capsys)
    assert "already holds a run" in stderr
    assert (runs / "runs/straight/metrics.csv").read_bytes() == before
