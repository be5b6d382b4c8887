"""The E2E-VLP tasks (pre-training, captioning, detection) trained and validated under a Lightning strategy.

``tests/tasks/test_e2e_distributed.py`` imports this module for the single-process references and
launches it as a script for the 2-process runs (gloo on the CPU), as ``distributed_run.py`` does for the
ViLT tasks, whose trainer and helpers it reuses::

    python tests/tasks/e2e_distributed_run.py {ddp,fsdp} --out results.pt

Every run trains :data:`distributed_run.STEPS` steps on one global batch (rank ``r`` of ``W``
takes rows ``[r*B/W, (r+1)*B/W)``), then captioning and detection validate on two batches, each rank
taking its half of each (equal shares: under FSDP2 every process must run the same forwards). The
batches hold equal MLM and caption-token counts per row (:mod:`e2e_parts`), so the runs must match
one process. Rank 0 writes a ``torch.save`` dict (``weights_only`` loadable).
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Any

import distributed_run as run
import e2e_parts as parts
from torch import Tensor

from vlp.batch import Batch
from vlp.objectives import matcher

KINDS = ("pretrain", "captioning", "detection")
VAL_BATCHES = 2


def make_task(kind: str, seed: int = run.INIT_SEED) -> Any:
    # AdamW's eps at 1e-6: a gradient that is float noise (the key biases of attention have none in
    # exact arithmetic) would otherwise be normalised into a full-size step, different in every run
    # ViT patches: no BatchNorm, whose batch statistics would differ between one process and two
    common = {"seed": seed, "visual": "patch", "lr": run.LR, "warmup": 0.2, "eps": 1e-6}
    if kind == "captioning":
        return parts.captioning_task(**common)
    # Anchored queries start from distinct reference boxes, so the Hungarian matching is decided by clear
    # margins (MatchingMargins); plain queries of a fresh model predict nearly the same box and tie.
    make = parts.pretrain_task if kind == "pretrain" else parts.detection_task
    return make(model_kwargs={"anchor_queries": True}, **common)


class MatchingMargins:
    """Records, for every matching the Hungarian matcher solves, the gap between the cheapest assignment
    and the next cheapest one (by enumeration: the tiny models have few queries and targets).

    Two runs that sum gradients in another order differ by float noise (~1e-6 in the costs); a matching
    whose margin is far above that cannot flip between them, so their weights may differ only by noise.
    """

    def __init__(self) -> None:
        self.margins: list[float] = []

    def __enter__(self) -> MatchingMargins:
        self.original = matcher.assign

        def assign(cost: Tensor, counts: Any) -> Any:
            for block, count in zip(cost, counts):
                self.margins.append(assignment_margin(block[:, :count]))
            return self.original(cost, counts)

        matcher.assign = assign
        return self

    def __exit__(self, *exc: object) -> None:
        matcher.assign = self.original


def assignment_margin(cost: Tensor) -> float:
    """Second-cheapest minus cheapest total cost over all injective query -> target assignments."""
    queries, targets = cost.shape
    if targets == 0:
        return float("inf")
    totals = sorted(
        sum(float(cost[q, t]) for t, q in enumerate(chosen))
        for chosen in itertools.permutations(range(queries), targets)
    )
    return totals[1] - totals[0] if len(totals) > 1 else float("inf")


def train_batches() -> list[Batch]:
    """One global batch for every step: the loss then falls step by step, which shows the runs learn."""
    return parts.e2e_batches(1, size=run.GLOBAL_BATCH) * run.STEPS


def val_batches() -> list[Batch]:
    return parts.e2e_batches(VAL_BATCHES, size=run.GLOBAL_BATCH, seed=12)


def fit(kind: str, devices: int, strategy: Any) -> dict[str, Any]:
    """Train ``kind`` (weights from a rank-dependent seed: the strategy must make rank 0's everyone's),
    validate captioning and detection, return the global losses, metrics and full weights."""
    recorder = run.LossRecorder()
    trainer = run.make_trainer(devices=devices, strategy=strategy, callbacks=[recorder])
    task = make_task(kind, seed=run.INIT_SEED + trainer.global_rank)
    data = run.RankRows(train_batches(), val_batches())
    with MatchingMargins() as matchings:
        trainer.fit(task, datamodule=data)
    result: dict[str, Any] = {
        "losses": run.rank_mean(recorder.losses, trainer),
        "min_margin": min(matchings.margins, default=math.inf),
    }
    if kind != "pretrain":
        trainer.validate(task, datamodule=data, verbose=False)
        result["metrics"] = run.val_metrics(trainer)
        if kind == "captioning":
            result["predictions"] = task.predictions  # every process's, gathered for scoring
    result["state"] = run.full_state_dict(task)
    return result


def run_all(devices: int, make_strategy: Any) -> dict[str, Any]:
    return {kind: fit(kind, devices, make_strategy()) for kind in KINDS}


if __name__ == "__main__":
    run.script_main(sys.argv[1:], __doc__, run_all)
