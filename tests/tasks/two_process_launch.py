"""A ``*_distributed_run.py MODE`` script started in the background for the two-process tests, and the
comparison of its results with one process's.

Shared by the DDP/FSDP2 equivalence tests of every task family. The launch runs in a session of its
own, so :meth:`Launch.stop` also ends the rank Lightning spawned (rank 1 outlives a killed rank 0).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

MODES = ("ddp", "fsdp")
LAUNCH_ENV_KEYS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED")


class Launch:
    """``python SCRIPT MODE --out WORKDIR/MODE.pt [extra...]`` started now; :meth:`result` waits for it."""

    def __init__(
        self, script: Path, mode: str, workdir: Path, extra: Sequence[str] = (), timeout: float = 900
    ) -> None:
        self.mode, self.workdir, self.timeout = mode, workdir, timeout
        self.out = workdir / f"{mode}.pt"
        env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS}
        env.update(PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
        command = [sys.executable, str(script), mode, "--out", str(self.out), *extra]
        with (workdir / "log.txt").open("w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True
            )

    def result(self) -> dict[str, Any]:
        try:
            code = self.process.wait(timeout=self.timeout)
        finally:
            self.stop()
        assert code == 0, (self.workdir / "log.txt").read_text()[-4000:]
        return torch.load(self.out, weights_only=True)

    def stop(self) -> None:
        """End every process of the launch still running."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def two_process_results(
    script: Path, tmp_path_factory: pytest.TempPathFactory, prefix: str, together: bool = True
) -> dict[str, dict[str, Any]]:
    """Each of :data:`MODES` run by ``script`` (in ``tmp_path_factory.mktemp(f"{prefix}_{mode}")``): mode ->
    what rank 0 saved. ``together``: both launches start at once, so their start-up (imports, gloo)
    overlaps; otherwise one at a time, for runs that each keep both cores busy."""

    def start(mode: str) -> Launch:
        return Launch(script, mode, tmp_path_factory.mktemp(f"{prefix}_{mode}"))

    if not together:
        return {mode: start(mode).result() for mode in MODES}
    started = {mode: start(mode) for mode in MODES}
    try:
        return {mode: launch.result() for mode, launch in started.items()}
    finally:
        for launch in started.values():
            launch.stop()


def assert_same_run(
    result: dict[str, Any],
    reference: dict[str, Any],
    steps: int,
    loss_tol: dict[str, float],
    weight_tol: dict[str, float],
) -> None:
    """A two-process run's ``steps`` per-step losses and full weights are the one-process reference's."""
    assert len(result["losses"]) == steps
    torch.testing.assert_close(result["losses"], reference["losses"], **loss_tol)
    assert sorted(result["state"]) == sorted(reference["state"])
    for name, value in reference["state"].items():
        torch.testing.assert_close(result["state"][name], value, **weight_tol, msg=name)
