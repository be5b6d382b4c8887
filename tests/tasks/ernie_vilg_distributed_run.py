"""ERNIEViLGTask trained and validated under a Lightning strategy, for ``test_ernie_vilg_distributed.py``.

As ``e2e_distributed_run.py`` for the E2E-VLP tasks, with ``distributed_run.py``'s data module, trainer
and helpers::

    python tests/tasks/ernie_vilg_distributed_run.py {ddp,fsdp} --out results.pt

Two settings train :data:`distributed_run.STEPS` steps on the same global batches (rank ``r`` of ``W``
takes rows ``[r*B/W, (r+1)*B/W)``): ``two_stage`` (text→image + image→text LM on frozen VQGAN codes) and
``end_to_end`` (plus the pixel L1 through the frozen VQGAN decoder). ``two_stage`` then validates on two
batches (caption decoding, metrics over both processes). Weights come from a rank-dependent seed, the
VQGAN's included: the strategy must make rank 0's everyone's. Rank 0 writes a ``torch.save`` dict.
"""

from __future__ import annotations

import sys
from typing import Any

import distributed_run as run
import ernie_vilg_parts as parts

from vlp.batch import Batch

KINDS = ("two_stage", "end_to_end")
VAL_BATCHES = 2


def make_task(kind: str, seed: int = run.INIT_SEED) -> Any:
    # AdamW's eps at 1e-6 as in e2e_distributed_run: float-noise gradients are not blown up into steps
    return parts.ernie_task(seed=seed, end_to_end=kind == "end_to_end", lr=run.LR, warmup=0.2, eps=1e-6)


def train_batches() -> list[Batch]:
    return parts.batches(run.STEPS, size=run.GLOBAL_BATCH)


def val_batches() -> list[Batch]:
    return parts.batches(VAL_BATCHES, size=run.GLOBAL_BATCH, seed=12)


def fit(kind: str, devices: int, strategy: Any) -> dict[str, Any]:
    recorder = run.LossRecorder()
    trainer = run.make_trainer(devices=devices, strategy=strategy, callbacks=[recorder])
    task = make_task(kind, seed=run.INIT_SEED + trainer.global_rank)
    data = run.RankRows(train_batches(), val_batches())
    trainer.fit(task, datamodule=data)
    result: dict[str, Any] = {"losses": run.rank_mean(recorder.losses, trainer)}
    if kind == "two_stage":
        trainer.validate(task, datamodule=data, verbose=False)
        result["metrics"] = run.val_metrics(trainer)
        result["predictions"] = task.predictions
    result["state"] = run.full_state_dict(task)
    return result


def run_all(devices: int, make_strategy: Any) -> dict[str, Any]:
    return {kind: fit(kind, devices, make_strategy()) for kind in KINDS}


if __name__ == "__main__":
    run.script_main(sys.argv[1:], __doc__, run_all)
