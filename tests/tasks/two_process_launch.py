"""A ``*_distributed_run.py MODE`` script started in the background for the two-process tests.

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

import torch

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
