"""One task of each family with ``compile`` on, trained under a Lightning strategy, for ``test_compile.py``.

As ``distributed_run.py`` (its trainer, data modules and helpers; rank ``r`` of ``W`` takes rows
``[r*B/W, (r+1)*B/W)`` of the same global batches, weights from a rank-dependent seed)::

    python tests/tasks/compile_distributed_run.py {ddp,fsdp} --out results.pt

The tasks compile their blocks with ``aot_eager`` (traced into forward and backward graphs as inductor's
input, run by PyTorch's kernels: no C++ compile in each process): ViLT pre-training (encoder blocks, the
MLM view's last block on selected rows), E2E-VLP captioning (decoder layers; validation decodes with the
KV cache through the compiled layers) and ERNIE-ViLG's two-stage task (sparse-attention blocks), each
:data:`distributed_run.STEPS` steps; under ``fsdp`` ViLT also trains with activation checkpointing and
with bf16-mixed. Rank 0 writes a ``torch.save`` dict.
"""

from __future__ import annotations

import sys
from typing import Any

import distributed_run as run
import e2e_distributed_run as e2e
import e2e_parts
import ernie_vilg_distributed_run as ernie
import ernie_vilg_parts
from lightning.pytorch.strategies import ModelParallelStrategy

from vlp.models.embedders.text import TextEmbedder
from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.layers.heads import ITMHead, MLMHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.objectives import ITMObjective, MLMObjective
from vlp.tasks.compile import CompileConfig

COMPILE = CompileConfig(backend="aot_eager")
KINDS = ("vilt", "e2e_captioning", "ernie_vilg")


def vilt_task(seed: int, **kwargs: Any) -> run.RecordingTask:
    """``distributed_run.make_task``'s tiny ViLT pre-training task, compiled."""
    import torch

    torch.manual_seed(seed)
    model = ViLT(
        TextEmbedder(vocab_size=run.VOCAB, dim=run.DIM, max_len=16),
        ViTPatchEmbedder(dim=run.DIM, patch_size=8, pos_grid=2),
        TransformerEncoder(dim=run.DIM, depth=2, num_heads=4),
    )
    objectives = {
        "mlm": MLMObjective(MLMHead(run.DIM, vocab_size=run.VOCAB)),
        "itm": ITMObjective(ITMHead(run.DIM)),
    }
    return run.RecordingTask(model, objectives, lr=run.LR, warmup=0.2, compile=COMPILE, **kwargs)


def make_task(kind: str, seed: int) -> Any:
    # AdamW's eps at 1e-6 for the E2E-VLP and ERNIE-ViLG tasks, as their eager distributed runs
    common = {"seed": seed, "lr": run.LR, "warmup": 0.2, "eps": 1e-6, "compile": COMPILE}
    if kind == "e2e_captioning":
        return e2e_parts.captioning_task(visual="patch", **common)
    return ernie_vilg_parts.ernie_task(end_to_end=False, **common)


def fit_vilt(
    devices: int, strategy: str | ModelParallelStrategy, precision: str = "32-true", **kwargs: Any
) -> dict[str, Any]:
    trainer = run.make_trainer(devices=devices, strategy=strategy, precision=precision)
    task = vilt_task(run.INIT_SEED + trainer.global_rank, **kwargs)
    return run.fit(run.make_batches(), trainer, task)


def fit(kind: str, devices: int, strategy: str | ModelParallelStrategy) -> dict[str, Any]:
    """Train ``kind``, then validate it (captions decoded and scored over every process)."""
    if kind == "vilt":
        return fit_vilt(devices, strategy)
    family = e2e if kind == "e2e_captioning" else ernie
    recorder = run.LossRecorder()
    trainer = run.make_trainer(devices=devices, strategy=strategy, callbacks=[recorder])
    task = make_task(kind, seed=run.INIT_SEED + trainer.global_rank)
    data = run.RankRows(family.train_batches(), family.val_batches())
    trainer.fit(task, datamodule=data)
    result: dict[str, Any] = {"losses": run.rank_mean(recorder.losses, trainer)}
    trainer.validate(task, datamodule=data, verbose=False)
    result["metrics"] = run.val_metrics(trainer)
    result["predictions"] = task.predictions
    result["state"] = run.full_state_dict(task)
    return result


def run_all(devices: int, make_strategy: Any) -> dict[str, Any]:
    results = {kind: fit(kind, devices, make_strategy()) for kind in KINDS}
    if isinstance(make_strategy(), ModelParallelStrategy):
        results["vilt_activation_checkpointing"] = fit_vilt(
            devices, make_strategy(), activation_checkpointing=True
        )
        results["vilt_bf16"] = fit_vilt(devices, make_strategy(), precision="bf16-mixed")
    return results


if __name__ == "__main__":
    run.script_main(sys.argv[1:], __doc__, run_all)
