"""ERNIEViLGTask under DDP and FSDP2 on two CPU processes against one process.

Two-stage (text→image + image→text LM) and end-to-end (plus the pixel L1 through the frozen VQGAN
decoder) train five steps (``ernie_vilg_distributed_run.py``); losses and final weights (the VQGAN's
included, built from a rank-dependent seed) must be one process's. Under FSDP2 the model and objectives
are sharded and the frozen VQGAN is broadcast and kept whole. Caption decoding in validation (gathered from
both processes) must give one process's captions and metrics.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed_run as run
import ernie_vilg_distributed_run as ev
import pytest
import torch
from lightning import Trainer

# two 2-process launches and a one-process reference: about 2 minutes on this shared 2-core machine
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

SCRIPT = Path(__file__).with_name("ernie_vilg_distributed_run.py")
LAUNCH_ENV_KEYS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED")
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-5}
WEIGHT_TOL = {"rtol": 1e-4, "atol": 1e-4}


class Launch:
    """``ernie_vilg_distributed_run.py MODE`` in the background, in a session of its own."""

    def __init__(self, mode: str, workdir: Path) -> None:
        self.workdir, self.out = workdir, workdir / f"{mode}.pt"
        env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS}
        env.update(PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
        command = [sys.executable, str(SCRIPT), mode, "--out", str(self.out)]
        with (workdir / "log.txt").open("w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True
            )

    def result(self) -> dict[str, Any]:
        try:
            code = self.process.wait(timeout=900)
        finally:
            self.stop()
        assert code == 0, (self.workdir / "log.txt").read_text()[-4000:]
        return torch.load(self.out, weights_only=True)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    # one launch at a time: each uses both cores
    out = {}
    for mode in ("ddp", "fsdp"):
        launch = Launch(mode, tmp_path_factory.mktemp(f"ernie_{mode}"))
        try:
            out[mode] = launch.result()
        finally:
            launch.stop()
    yield out


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    torch.set_num_threads(1)
    return ev.run_all(1, lambda: "auto")


@pytest.mark.parametrize("kind", ev.KINDS)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_as_one(
    kind: str, strategy: str, results: dict[str, Any], single: dict[str, Any]
) -> None:
    result, reference = results[strategy][kind], single[kind]
    assert len(result["losses"]) == run.STEPS
    assert reference["losses"][-1] < reference["losses"][0]
    torch.testing.assert_close(result["losses"], reference["losses"], **LOSS_TOL)
    assert sorted(result["state"]) == sorted(reference["state"])
    assert any(name.startswith("vqgan.") for name in reference["state"])
    for name, value in reference["state"].items():
        torch.testing.assert_close(result["state"][name], value, **WEIGHT_TOL, msg=name)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_caption_validation_over_two_processes_is_one_process(strategy: str, results: dict[str, Any]) -> None:
    result = results[strategy]["two_stage"]
    task = ev.make_task("two_stage", seed=123)
    task.load_state_dict(result["state"])  # strict
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(task, datamodule=ev.e2e.RankRows([], ev.val_batches()), verbose=False)
    expected = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    for name in ("val/bleu_4", "val/cider", "val/rouge_l", "val/t2i_loss", "val/i2t_loss"):
        assert result["metrics"][name] == pytest.approx(expected[name], abs=1e-5), name
    assert len(task.predictions) == ev.VAL_BATCHES * run.GLOBAL_BATCH
    assert result["predictions"] == task.predictions
