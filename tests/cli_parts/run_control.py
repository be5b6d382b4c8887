"""Callbacks that tests add to a ``python -m vlp fit`` run (``--trainer.callbacks+=...`` with this folder on
``PYTHONPATH``) to stop it at a known step, as a preemption or a crash would."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L


class HoldAt(L.Callback):
    """After optimiser step ``step``, write ``marker`` and wait until the process is asked to stop
    (SIGTERM) or killed, so that a test can send the signal at a known step."""

    def __init__(self, step: int, marker: str) -> None:
        self.step = step
        self.marker = marker

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        Path(self.marker).write_text(str(self.step))
        deadline = time.monotonic() + 120
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)
