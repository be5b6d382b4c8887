"""FSDP2: ``fully_shard`` per transformer block and per embedder, then the root module.

Called from a task's ``configure_model`` under Lightning's ``ModelParallelStrategy``; the same code
runs on the CPU with gloo. No multi-process test covers it yet (issue 3).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from vlp.models.embedders.base import VisualEmbedder
from vlp.models.text import TextEmbedder
from vlp.models.transformer import Block

SHARD_UNITS: tuple[type[nn.Module], ...] = (Block, VisualEmbedder, TextEmbedder)


def shard_units(module: nn.Module, units: tuple[type[nn.Module], ...] = SHARD_UNITS) -> list[nn.Module]:
    """The outermost submodules of the given types: each becomes one FSDP2 unit (one all-gather)."""
    found: list[nn.Module] = []

    def visit(node: nn.Module) -> None:
        for child in node.children():
            if isinstance(child, units):
                found.append(child)
            else:
                visit(child)

    visit(module)
    return found


def apply_fsdp2(roots: list[nn.Module], mesh: DeviceMesh, bf16: bool = False) -> None:
    """Shard in place: every unit inside each root, then each root.

    A root must be a module whose ``forward`` is called (FSDP2 gathers parameters in forward hooks),
    so a task passes its model and each objective, never a ``ModuleDict``. Every parameter must end
    up in some root: ``ModelParallelStrategy`` does no other gradient reduction. With ``bf16``
    parameters are gathered and computed in bfloat16 while gradients are reduced in float32.
    """
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for root in roots:
        for unit in shard_units(root):
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        fully_shard(root, mesh=mesh, mp_policy=policy)
