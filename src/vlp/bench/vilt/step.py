"""Both sides built from the same initial weights, and one side's training step (AdamW, autocast) and
batch-1 inference pass."""

from __future__ import annotations

from contextlib import nullcontext
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from vlp.bench.vilt.batch import BenchBatch
from vlp.bench.vilt.config import Precision, Side, ViltBenchConfig
from vlp.bench.vilt.transformers_side import TransformersSide, transformers_to_vlp
from vlp.bench.vilt.vlp_side import VlpSide
from vlp.tasks.optim import ADAMW_IMPLEMENTATIONS


def build_sides(config: ViltBenchConfig) -> tuple[VlpSide, TransformersSide]:
    """Both models, vlp's loaded (strictly, every key) with the transformers side's initial weights."""
    hf = TransformersSide(config)
    vlp = VlpSide(config)
    vlp.load_state_dict(transformers_to_vlp(hf, config.depth), strict=True)
    return vlp, hf


def compiled_copy(side: Side, module: nn.Module, config: ViltBenchConfig) -> nn.Module:
    """A copy of one side's model (same weights, ties kept) with every transformer block compiled in place
    as a task compiles them (:func:`~vlp.tasks.compile.compile_blocks`): vlp's ``Block``, transformers'
    ``ViltLayer``."""
    from transformers.models.vilt.modeling_vilt import ViltLayer

    from vlp.tasks.compile import COMPILE_UNITS, compile_blocks

    copy = deepcopy(module)
    units = COMPILE_UNITS if side == "vlp" else (ViltLayer,)
    if compile_blocks(copy, config.compile_config, units) != config.depth:
        raise RuntimeError(f"bench vilt: the {side} model does not have {config.depth} blocks to compile")
    return copy


def make_optimizer(module: nn.Module, config: ViltBenchConfig) -> torch.optim.Optimizer:
    """The same AdamW on both sides, one group, in the implementation ``config.adamw`` names."""
    return torch.optim.AdamW(
        module.parameters(),
        lr=config.lr,
        betas=(0.9, 0.98),
        weight_decay=0.01,
        **ADAMW_IMPLEMENTATIONS[config.adamw],
    )


def autocast(precision: Precision) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


class StepRunner:
    """One side's training step and batch-1 inference pass, with its inputs prepared once."""

    def __init__(self, side: Side, module: nn.Module, config: ViltBenchConfig, batch: BenchBatch) -> None:
        self.side, self.module, self.config = side, module, config
        self.optimizer = make_optimizer(module, config)
        single = batch.head(1)
        if side == "vlp":
            vlp_batch, vlp_single = batch.for_vlp(), single.for_vlp()
            self._losses = lambda: module.losses(vlp_batch)
            self._infer = lambda: module.itm_logits(vlp_single)
        else:
            inputs, single_inputs = batch.for_transformers(), single.for_transformers()
            self._losses = lambda: module.losses(inputs, batch.mlm_labels, batch.itm_labels)
            self._infer = lambda: module.itm_logits(single_inputs)

    def restart(self, state: dict[str, Tensor]) -> None:
        """Back to the weights ``state`` with a fresh optimiser: each precision starts at step 0."""
        self.module.load_state_dict(state, strict=True)
        self.optimizer = make_optimizer(self.module, self.config)

    def losses(self, precision: Precision) -> tuple[Tensor, Tensor]:
        with autocast(precision):
            return self._losses()

    def step(self, precision: Precision) -> tuple[Tensor, Tensor]:
        """Forward, backward, AdamW step; returns the (MLM, ITM) losses, detached. The three parts are
        labelled ``## forward``, ``## backward``, ``## optimizer`` for ``torch.profiler``
        (``benchmarks/diagnostics/profile_vilt_step.py``); without a profiler the labels cost nothing
        measurable against a step."""
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        with record_function("## forward"):
            mlm, itm = self.losses(precision)
        with record_function("## backward"):
            (mlm + itm).backward()
        with record_function("## optimizer"):
            self.optimizer.step()
        return mlm.detach(), itm.detach()

    def infer(self, precision: Precision) -> Tensor:
        self.module.eval()
        with torch.no_grad(), autocast(precision):
            return self._infer()
