"""A tiny PretrainTask (and the fine-tuning tasks) trained under a Lightning strategy, for the distributed tests.

``tests/tasks/test_distributed.py`` imports this module for single-process reference runs and launches
it as a script for the 2-process runs (Lightning's own launcher re-runs the script once per rank, gloo
on the CPU), so the pytest process never joins a process group::

    python tests/tasks/distributed_run.py {ddp,fsdp} --out results.pt --workdir DIR

Rank 0 writes a ``torch.save`` dict of plain tensors, lists and numbers (``weights_only`` loadable).

Every run sees the same global batches: global batch ``i`` is trained at step ``i`` (one step per epoch,
loaders rebuilt each epoch), and rank ``r`` of ``W`` takes rows ``[r*B/W, (r+1)*B/W)`` of it, with no
``DistributedSampler``. Each sample carries exactly one MLM label, so every rank and every
micro-batch holds the same number of MLM targets and the mean of per-rank mean losses equals the
mean over the global batch (with unequal counts DDP's gradient average would not be the global mean).
Dropout is off and all patches are kept, so nothing random happens after the weights are built.

The weights are built with a rank-dependent seed (``INIT_SEED + rank``): both strategies must make
rank 0's initial weights everyone's (DDP broadcasts them; vlp's FSDP2 path does too), or the runs would
not match a single process built with ``INIT_SEED``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import finetune_parts as parts
import torch
from lightning import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor
from torch.utils.data import DataLoader

from vlp.batch import Batch
from vlp.models.embedders.text import TextEmbedder
from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.layers.heads import ITMHead, MLMHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.objectives import ITMObjective, MLMObjective
from vlp.tasks import PretrainTask

DIM = 32
VOCAB = 100
TEXT_LEN = 8
IMAGE = 16
GLOBAL_BATCH = 8
STEPS = 5
RESUME_AT = 3
INIT_SEED = 1000
DATA_SEED = 7
LR = 3e-3


def make_task(seed: int = INIT_SEED, activation_checkpointing: bool = False) -> RecordingTask:
    """The tiny ViLT pre-training task (MLM + ITM, AdamW as the task builds it), weights from ``seed``."""
    torch.manual_seed(seed)
    model = ViLT(
        TextEmbedder(vocab_size=VOCAB, dim=DIM, max_len=16),
        ViTPatchEmbedder(dim=DIM, patch_size=8, pos_grid=2),
        TransformerEncoder(dim=DIM, depth=2, num_heads=4),
    )
    objectives = {
        "mlm": MLMObjective(MLMHead(DIM, vocab_size=VOCAB)),
        "itm": ITMObjective(ITMHead(DIM)),
    }
    return RecordingTask(
        model, objectives, lr=LR, warmup=0.2, activation_checkpointing=activation_checkpointing
    )


class RecordingTask(PretrainTask):
    """Keeps each training step's loss (of this rank's micro-batch) for the tests to compare."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_losses: list[Tensor] = []

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        loss = super().training_step(batch, batch_idx)
        if loss is not None:
            self.step_losses.append(loss.detach().float().clone())
        return loss


def make_batches(steps: int = STEPS, size: int = GLOBAL_BATCH) -> list[Batch]:
    """``steps`` global batches; texts of varying length (padding masked), one MLM label per sample."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    batches = []
    for step in range(steps):
        ids = torch.randint(5, VOCAB, (size, TEXT_LEN), generator=generator)
        ids[:, 0] = 2  # a [CLS]-like first token
        lengths = torch.randint(4, TEXT_LEN + 1, (size,), generator=generator)
        text_mask = torch.arange(TEXT_LEN)[None] < lengths[:, None]
        ids = ids.masked_fill(~text_mask, 0)
        position = torch.randint(1, 4, (size,), generator=generator)
        labels = torch.full_like(ids, -100)
        rows = torch.arange(size)
        labels[rows, position] = ids[rows, position]
        masked = ids.clone()
        masked[rows, position] = 3  # a [MASK]-like id
        itm_labels = torch.randint(0, 2, (size,), generator=generator)
        partner = rows ^ 1  # negatives pair adjacent rows, so every (even-sized) slice keeps its partners
        batches.append(
            Batch(
                keys=[f"{step}-{i}" for i in range(size)],
                pixels=torch.randn(size, 3, IMAGE, IMAGE, generator=generator),
                pixel_mask=torch.ones(size, IMAGE, IMAGE, dtype=torch.bool),
                text_ids=ids,
                text_mask=text_mask,
                mlm_text_ids=masked,
                mlm_labels=labels,
                itm_labels=itm_labels,
                itm_image_index=torch.where(itm_labels == 1, rows, partner),
            )
        )
    return batches


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows ``[start, stop)`` of every per-sample field, lists (keys, targets, references) included."""
    sliced: dict[str, Any] = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, Tensor | list) and f.name != "skipped_keys":
            sliced[f.name] = value[start:stop]
    if batch.itm_image_index is not None:
        sliced["itm_image_index"] = batch.itm_image_index[start:stop] - start
    return replace(batch, **sliced)


class StepBatches(LightningDataModule):
    """Epoch ``e`` is global batch ``e``: this rank's rows of it, cut into ``micro_batches`` pieces.

    With ``reload_dataloaders_every_n_epochs=1`` the loader is rebuilt at each epoch, so a run
    resumed from an end-of-epoch checkpoint continues with exactly the batch it would have seen.
    """

    def __init__(self, batches: list[Batch], micro_batches: int = 1) -> None:
        super().__init__()
        self.batches = batches
        self.micro_batches = micro_batches

    def train_dataloader(self) -> DataLoader:
        batch = self.batches[self.trainer.current_epoch]
        world, rank = self.trainer.world_size, self.trainer.global_rank
        per_rank = len(batch) // world
        start = rank * per_rank
        per_micro = per_rank // self.micro_batches
        pieces = [
            slice_batch(batch, start + i * per_micro, start + (i + 1) * per_micro)
            for i in range(self.micro_batches)
        ]
        return DataLoader(pieces, batch_size=None, shuffle=False)


class RankRows(LightningDataModule):
    """Training epoch ``e`` is this rank's rows of global batch ``e``; validation is this rank's rows of
    every validation batch (equal shares: under FSDP2 every process must run the same forwards)."""

    def __init__(self, train: list[Batch], val: list[Batch]) -> None:
        super().__init__()
        self.train, self.val = train, val

    def _rows(self, batch: Batch) -> Batch:
        share = len(batch) // self.trainer.world_size
        start = self.trainer.global_rank * share
        return slice_batch(batch, start, start + share)

    def train_dataloader(self) -> DataLoader:
        return DataLoader([self._rows(self.train[self.trainer.current_epoch])], batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([self._rows(batch) for batch in self.val], batch_size=None)


class ShardReport(Callback):
    """At the first step: how each rank holds the parameters, and what the optimiser was built on."""

    def __init__(self) -> None:
        self.report: dict[str, Any] = {}

    def on_train_start(self, trainer: Trainer, pl_module: RecordingTask) -> None:
        from torch.distributed.tensor import DTensor

        params = list(pl_module.parameters())
        optimizer_params = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
        per_rank = [None] * trainer.world_size
        torch.distributed.all_gather_object(per_rank, local)
        self.report = {
            "all_dtensor": all(isinstance(p, DTensor) for p in params),
            "optimizer_all_dtensor": all(isinstance(p, DTensor) for p in optimizer_params),
            "optimizer_holds_module_params": {id(p) for p in optimizer_params} == {id(p) for p in params},
            "total_numel": sum(p.numel() for p in params),
            "local_numel_per_rank": per_rank,
        }


def make_trainer(
    devices: int = 1,
    strategy: str | ModelParallelStrategy = "auto",
    precision: str = "32-true",
    accumulate_grad_batches: int = 1,
    callbacks: list[Callback] | None = None,
    root: Path | None = None,
    **overrides: Any,
) -> Trainer:
    """The Trainer of every run here: :data:`STEPS` steps, one per epoch (loaders rebuilt each epoch),
    no sampler, logger or progress bar; ``overrides`` are further ``Trainer`` arguments."""
    return Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        precision=precision,
        max_steps=STEPS,
        accumulate_grad_batches=accumulate_grad_batches,
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks or []),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **overrides,
    )


def rank_mean(losses: list[Tensor], trainer: Trainer, micro_batches: int = 1) -> list[float]:
    """Per-step losses averaged over ranks (= the global-batch mean under equal per-rank counts).

    ``losses`` holds one loss per micro-batch; Lightning records each divided by ``micro_batches``, so a
    step's loss is the sum of its micro-batches'."""
    stacked = torch.stack(losses).view(-1, micro_batches).sum(1)
    if trainer.world_size > 1:
        torch.distributed.all_reduce(stacked)  # gloo has no AVG
        stacked = stacked / trainer.world_size
    return stacked.tolist()


def global_losses(task: RecordingTask, trainer: Trainer) -> list[float]:
    """The task's per-step losses (one per micro-batch) averaged over ranks."""
    return rank_mean(task.step_losses, trainer)


def val_metrics(trainer: Trainer) -> dict[str, float]:
    """The ``val/`` figures the last validation logged."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def validate_alone(task: Any, data: LightningDataModule) -> dict[str, float]:
    """``task`` validated by one process on ``data``: the reference for figures gathered over ranks."""
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(task, datamodule=data, verbose=False)
    return val_metrics(trainer)


def full_state_dict(task: RecordingTask) -> dict[str, Tensor]:
    """Unsharded float32 CPU copies of every weight (a collective under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(task, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().float().clone() for k, v in state.items()}


@torch.no_grad()
def evaluate(task: RecordingTask, batch: Batch) -> dict[str, Tensor]:
    """Eval-mode outputs on one batch, through each FSDP root's own ``forward``."""
    task.eval()
    views = task.forward_model(batch)  # each view computes only the rows its objectives read
    every_row = task.model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
    result = {"pooled": views["itm"].pooled.float(), "text_states": every_row.text_states.float()}
    for name, objective in task.objectives.items():
        result[f"{name}_loss"] = objective(views[objective.view], batch).loss.float()
    task.train()
    return result


def fit(
    batches: list[Batch],
    trainer: Trainer,
    task: RecordingTask,
    micro_batches: int = 1,
    ckpt_path: str | None = None,
) -> dict[str, Any]:
    trainer.fit(task, datamodule=StepBatches(batches, micro_batches), ckpt_path=ckpt_path)
    return {"losses": global_losses(task, trainer), "state": full_state_dict(task)}


def fsdp_strategy(world_size: int) -> ModelParallelStrategy:
    return ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1)


# ------------------------------------------------------------------------------ fine-tuning tasks
# VQA and NLVR2 train on the rows of fixed global batches like the pre-training task above (equal rows
# per rank, so the mean of the ranks' mean losses is the global mean) and must match one process.
# Retrieval draws its negatives among the captions of each rank's own micro-batch, so it legitimately
# differs from one process; what is checked there is its evaluation: every process keeps different
# (and differently many) batches, scores an equal share of all text x image pairs, and the recall
# must be that of one process scoring the whole pool with the same weights.

FINETUNE_KINDS = ("vqa", "nlvr2", "retrieval")
EVAL_CHUNK = 16


def make_finetune_task(kind: str, seed: int = INIT_SEED) -> Any:
    make = {"vqa": parts.vqa_task, "nlvr2": parts.nlvr2_task, "retrieval": parts.retrieval_task}[kind]
    extra = {"negatives": 3, "eval_chunk_size": EVAL_CHUNK} if kind == "retrieval" else {}
    return make(seed=seed, lr=LR, warmup=0.2, **extra)


def make_finetune_batches(kind: str) -> list[Batch]:
    make = {"vqa": parts.vqa_batches, "nlvr2": parts.pair_batches, "retrieval": parts.caption_batches}[kind]
    return make(steps=STEPS, size=GLOBAL_BATCH)


class LossRecorder(Callback):
    """Each training step's loss (of this rank's micro-batch)."""

    def __init__(self) -> None:
        self.losses: list[Tensor] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.losses.append(outputs["loss"].detach().float().clone())


class EvalBatches(LightningDataModule):
    """Rank ``r`` of ``W`` validates on batches ``r, r + W, ...``: unequal shares on purpose."""

    def __init__(self, batches: list[Batch]) -> None:
        super().__init__()
        self.batches = batches

    def val_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return DataLoader(self.batches[rank::world], batch_size=None, shuffle=False)


def train_finetune(
    make_task: Callable[[int], Any],
    batches: list[Batch],
    devices: int,
    strategy: str | ModelParallelStrategy,
    eval_batches: list[Batch] | None = None,
    micro_batches: int = 1,
) -> dict[str, Any]:
    """Train ``make_task(INIT_SEED + rank)`` (the strategy must make rank 0's weights everyone's) on
    ``batches``, one global batch a step, each process accumulating ``micro_batches`` pieces of its rows;
    then validate on ``eval_batches`` (:class:`EvalBatches`) if given. Returns the per-step global losses,
    the validation metrics and the full weights."""
    recorder = LossRecorder()
    trainer = make_trainer(
        devices=devices, strategy=strategy, accumulate_grad_batches=micro_batches, callbacks=[recorder]
    )
    task = make_task(INIT_SEED + trainer.global_rank)
    trainer.fit(task, datamodule=StepBatches(batches, micro_batches))
    result: dict[str, Any] = {"losses": rank_mean(recorder.losses, trainer, micro_batches)}
    if eval_batches is not None:
        trainer.validate(task, datamodule=EvalBatches(eval_batches), verbose=False)
        result["metrics"] = val_metrics(trainer)
    result["state"] = full_state_dict(task)
    return result


def fit_finetune(
    kind: str, devices: int, strategy: Callable[[], str | ModelParallelStrategy]
) -> dict[str, Any]:
    """Train ``kind`` for :data:`STEPS` steps; retrieval then validates on
    :func:`finetune_parts.retrieval_eval_batches`. ``strategy`` makes a fresh strategy (a strategy object
    belongs to one trainer)."""
    eval_batches = parts.retrieval_eval_batches() if kind == "retrieval" else None
    return train_finetune(
        lambda seed: make_finetune_task(kind, seed),
        make_finetune_batches(kind),
        devices,
        strategy(),
        eval_batches,
    )


def run_finetune(devices: int, strategy: Callable[[], str | ModelParallelStrategy]) -> dict[str, Any]:
    return {kind: fit_finetune(kind, devices, strategy) for kind in FINETUNE_KINDS}


def run_ddp(out: Path, workdir: Path) -> None:
    batches = make_batches()
    trainer = make_trainer(devices=2, strategy="ddp")
    task = make_task(seed=INIT_SEED + int(trainer.global_rank))
    result = fit(batches, trainer, task)
    finetune = run_finetune(2, lambda: "ddp")
    if trainer.is_global_zero:
        torch.save({"fp32": result, "finetune": finetune}, out)


def run_fsdp(out: Path, workdir: Path) -> None:
    """fp32 (with DCP checkpoints at steps 3 and 5), resumed from step 3, activation checkpointing, bf16."""
    batches = make_batches()
    results: dict[str, Any] = {}

    # Saved after every optimiser step (on_train_batch_end): under max_steps, Lightning 2.6 resumes a
    # checkpoint written at on_train_epoch_end into that same epoch again, replaying its batches.
    checkpoints = ModelCheckpoint(
        dirpath=workdir / "checkpoints", filename="{step}", save_top_k=-1, every_n_train_steps=1
    )
    report = ShardReport()
    trainer = make_trainer(devices=2, strategy=fsdp_strategy(2), callbacks=[checkpoints, report])
    task = make_task(seed=INIT_SEED + trainer.global_rank)
    results["fp32"] = fit(batches, trainer, task)
    results["fp32"]["eval"] = evaluate(task, batches[0])
    results["shards"] = report.report

    resumed = make_task(seed=INIT_SEED + 10 + trainer.global_rank)  # overwritten by the checkpoint
    trainer = make_trainer(devices=2, strategy=fsdp_strategy(2))
    ckpt = workdir / "checkpoints" / f"step={RESUME_AT}.ckpt"
    results["resumed"] = fit(batches, trainer, resumed, ckpt_path=str(ckpt))

    trainer = make_trainer(devices=2, strategy=fsdp_strategy(2))
    task = make_task(seed=INIT_SEED + trainer.global_rank, activation_checkpointing=True)
    results["activation_checkpointing"] = fit(batches, trainer, task)

    trainer = make_trainer(devices=2, strategy=fsdp_strategy(2), precision="bf16-mixed")
    task = make_task(seed=INIT_SEED + trainer.global_rank)
    results["bf16"] = fit(batches, trainer, task)
    results["bf16"]["param_dtypes"] = sorted({str(p.dtype) for p in task.parameters()})

    results["finetune"] = run_finetune(2, lambda: fsdp_strategy(2))
    if trainer.is_global_zero:
        torch.save(results, out)


def run_single(
    precision: str = "32-true",
    activation_checkpointing: bool = False,
    micro_batches: int = 1,
    rows: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The reference: one process on the whole global batch (or on its halves with accumulation).

    ``rows`` trains on those rows of every global batch only: what one rank would do if nothing
    synchronised the ranks' gradients.
    """
    trainer = make_trainer(precision=precision, accumulate_grad_batches=micro_batches)
    task = make_task(activation_checkpointing=activation_checkpointing)
    batches = make_batches()
    if rows is not None:
        batches = [slice_batch(batch, *rows) for batch in batches]
    result = fit(batches, trainer, task, micro_batches=micro_batches)
    losses = result["losses"]  # one per micro-batch: average each optimiser step's micro-batches
    result["losses"] = [
        math.fsum(losses[i : i + micro_batches]) / micro_batches for i in range(0, len(losses), micro_batches)
    ]
    result["eval"] = evaluate(task, make_batches()[0])
    return result


def script_main(
    argv: list[str],
    description: str | None,
    run_all: Callable[[int, Callable[[], str | ModelParallelStrategy]], dict[str, Any]],
) -> None:
    """``SCRIPT {ddp,fsdp} --out PATH`` of the task families' runners: ``run_all(2, make_strategy)`` on two
    processes (``make_strategy`` makes a fresh strategy: one belongs to one trainer), rank 0 saving its dict."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("mode", choices=["ddp", "fsdp"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # two processes share two cores
    make_strategy = (lambda: "ddp") if args.mode == "ddp" else (lambda: fsdp_strategy(2))
    results = run_all(2, make_strategy)
    if torch.distributed.get_rank() == 0:
        torch.save(results, args.out)
    torch.distributed.destroy_process_group()  # before exit: a live gloo group can abort the process


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["ddp", "fsdp"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # two processes share two cores
    {"ddp": run_ddp, "fsdp": run_fsdp}[args.mode](args.out, args.workdir)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # before exit: a live gloo group can abort the process


if __name__ == "__main__":
    main(sys.argv[1:])
