"""VQGANTask trained and validated under a Lightning strategy, for ``test_vqgan_distributed.py``.

Imported for the single-process references and launched as a script for the 2-process runs (gloo on
the CPU), as ``distributed_run.py`` is for the ViLT tasks, whose batches-per-epoch data module, state
gathering and FSDP2 strategy it reuses::

    python tests/tasks/vqgan_distributed_run.py {ddp,fsdp} --out results.pt

Runs (:data:`distributed_run.STEPS` batches each, rank ``r`` of ``W`` taking rows ``[r*B/W, (r+1)*B/W)``
of every global batch):

* ``exact``: EMA codebook without restarts, GroupNorm discriminator, fixed GAN weight from the first
  step. Everything a step computes is a mean over rows or an all-reduced EMA statistic, so two processes
  must match one process on the global batch; then it validates on two batches (half of each per rank).
* ``adaptive``: dead-code restarts, BatchNorm discriminator (taming's) and the adaptive GAN weight.
  These legitimately depend on how the batch is split (restarts draw from the first rank's rows, the
  adaptive weight and BatchNorm see each rank's rows), so what is checked is that it trains and that
  every process ends with the same codebook (restarts broadcast, statistics all-reduced).

Rank 0 writes a ``torch.save`` dict (``weights_only`` loadable).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import distributed_run as run
import torch
import torch.nn.functional as F
from lightning import Trainer
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, also when run as a script

from conftest import make_tiny_vqgan
from vlp.batch import Batch
from vlp.models.vqgan.discriminator import NLayerDiscriminator
from vlp.objectives.vq import VQGANLoss
from vlp.tasks.vqgan import VQGANTask

KINDS = ("exact", "adaptive")
VAL_BATCHES = 2
SIZE = 16


class RecordingVQGANTask(VQGANTask):
    """Keeps each training step's total loss (of this rank's rows)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_losses: list[Tensor] = []

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        loss = super().training_step(batch, batch_idx)
        if loss is not None:
            self.step_losses.append(loss.float().clone())
        return loss


def make_task(kind: str, seed: int = run.INIT_SEED) -> RecordingVQGANTask:
    torch.manual_seed(seed)
    adaptive = kind == "adaptive"
    model = make_tiny_vqgan(resolution=SIZE, ema=True, dead_code_threshold=0.5 if adaptive else 0.0)
    loss = VQGANLoss(ema=True, disc_weight=0.1, disc_start=0, adaptive=adaptive)
    disc = NLayerDiscriminator(ndf=8, n_layers=2, norm="batch" if adaptive else "group")
    return RecordingVQGANTask(model, loss, disc, lr=3e-3)


def image_batches(count: int, seed: int) -> list[Batch]:
    """Blocky images (4x4 cells of one colour), pixels only."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for step in range(count):
        cells = torch.rand(run.GLOBAL_BATCH, 3, 4, 4, generator=generator) * 2 - 1
        pixels = F.interpolate(cells, size=(SIZE, SIZE), mode="nearest")
        batches.append(Batch(keys=[f"{seed}-{step}-{i}" for i in range(run.GLOBAL_BATCH)], pixels=pixels))
    return batches


def train_batches() -> list[Batch]:
    return image_batches(run.STEPS, seed=run.DATA_SEED)


def val_batches() -> list[Batch]:
    return image_batches(VAL_BATCHES, seed=12)


def make_trainer(devices: int, strategy: Any) -> Trainer:
    """No validation while fitting: the ``exact`` run validates once, after its last step."""
    return run.make_trainer(devices, strategy, num_sanity_val_steps=0, limit_val_batches=0)


def fit(kind: str, devices: int, strategy: Any) -> dict[str, Any]:
    trainer = make_trainer(devices, strategy)
    task = make_task(kind, seed=run.INIT_SEED + trainer.global_rank)
    data = run.RankRows(train_batches(), val_batches())
    trainer.fit(task, datamodule=data)
    codebook = task.model.quantize.embedding.weight.detach().clone()
    if trainer.world_size > 1:
        codebooks = [torch.zeros_like(codebook) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(codebooks, codebook)
    else:
        codebooks = [codebook]
    result: dict[str, Any] = {
        "losses": run.rank_mean(task.step_losses, trainer),
        "codebooks": codebooks,
        "global_step": trainer.global_step,
    }
    if kind == "exact":
        trainer.limit_val_batches = 1.0
        trainer.validate(task, datamodule=data, verbose=False)
        result["metrics"] = run.val_metrics(trainer)
    result["state"] = run.full_state_dict(task)
    return result


def run_all(devices: int, make_strategy: Any) -> dict[str, Any]:
    return {kind: fit(kind, devices, make_strategy()) for kind in KINDS}


if __name__ == "__main__":
    run.script_main(sys.argv[1:], __doc__, run_all)
