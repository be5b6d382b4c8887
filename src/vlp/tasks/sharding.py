"""FSDP2: ``fully_shard`` per transformer block (encoder and decoder) and per embedder, then the root module.

Called from a task's ``configure_model`` under Lightning's ``ModelParallelStrategy``; the same code
runs on the CPU with gloo, where ``tests/tasks/test_distributed.py`` checks it against a single
process (loss trajectory, sharding, bf16, activation checkpointing, distributed checkpoints).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.distributed as dist
from lightning import LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from vlp.models.embedders.base import VisualEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.decoder import DecoderLayer
from vlp.models.layers.transformer import Block

SHARD_UNITS: tuple[type[nn.Module], ...] = (Block, DecoderLayer, VisualEmbedder, TextEmbedder)


def fsdp2_mesh(task: LightningModule) -> DeviceMesh | None:
    """The mesh to shard ``task`` over with FSDP2 in its ``configure_model``: the data-parallel dimension
    of Lightning's ``ModelParallelStrategy``. ``None`` when there is nothing to shard: no trainer, another
    strategy, or ``task.model`` already sharded (``configure_model`` may run again, e.g. in
    ``trainer.test`` after fit).

    vlp applies no tensor parallelism: the strategy's whole mesh must be its data-parallel dimension
    (``data_parallel_size`` = number of processes, ``tensor_parallel_size: 1``). Lightning's ``"auto"``
    sizes put the processes of a node on the tensor-parallel dimension, where nothing would shard or
    reduce gradients, so that is refused here.
    """
    if task._trainer is None or not isinstance(task.trainer.strategy, ModelParallelStrategy):
        return None
    if isinstance(task.model, FSDPModule):
        return None
    mesh = task.device_mesh
    if mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"ModelParallelStrategy mesh is {dict(zip(mesh.mesh_dim_names, mesh.shape))}, but vlp shards "
            "over data_parallel only: set data_parallel_size to the number of processes "
            "(num_nodes x devices) and tensor_parallel_size: 1 (configs/trainer/fsdp.yaml)"
        )
    return mesh["data_parallel"]


def check_sharded(named_parameters: Iterable[tuple[str, nn.Parameter]], roots: str) -> None:
    """Refuse any of ``named_parameters`` left outside the sharded ``roots`` (named in the message):
    ``ModelParallelStrategy`` does no other gradient reduction, so nothing would average their gradients
    across ranks."""
    outside = [name for name, p in named_parameters if not isinstance(p, DTensor)]
    if outside:
        raise RuntimeError(f"parameters outside {roots} were not sharded: {outside}")


def outermost_submodules(module: nn.Module, types: tuple[type[nn.Module], ...]) -> list[nn.Module]:
    """The submodules of ``module`` of the given types that are not inside another one of them."""
    found: list[nn.Module] = []

    def visit(node: nn.Module) -> None:
        for child in node.children():
            if isinstance(child, types):
                found.append(child)
            else:
                visit(child)

    visit(module)
    return found


def shard_units(module: nn.Module, units: tuple[type[nn.Module], ...] = SHARD_UNITS) -> list[nn.Module]:
    """The outermost submodules of the given types: each becomes one FSDP2 unit (one all-gather)."""
    return outermost_submodules(module, units)


@torch.no_grad()
def broadcast_from_first_rank(module: nn.Module, mesh: DeviceMesh) -> None:
    """Copy the first rank's parameters and buffers to every rank of ``mesh``.

    ``fully_shard`` keeps each rank's own slice of its *local* tensors, so ranks that initialised
    differently (no seed, or a seed mixed with the rank) would silently train a patchwork of
    several models. DDP avoids that by broadcasting at wrap time; this does the same for FSDP2.
    Tensors still on the CPU under a GPU mesh (``fully_shard`` moves them later) travel through the
    mesh's device, as NCCL needs. Meta tensors (``empty_init``) have nothing to send and are skipped:
    they are initialised after sharding.
    """
    if mesh.size() == 1:
        return
    group = mesh.get_group()
    source = dist.get_global_rank(group, 0)
    device = torch.device(mesh.device_type)
    if device.type != "cpu":
        device = torch.device(device.type, torch.get_device_module(device.type).current_device())
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_meta:
            continue
        data = tensor.data
        buffer = data.to(device)  # the tensor itself when already there
        dist.broadcast(buffer, src=source, group=group)
        if buffer.device != data.device:
            data.copy_(buffer)


def apply_fsdp2(roots: list[nn.Module], mesh: DeviceMesh, bf16: bool = False) -> None:
    """Shard in place: every unit inside each root, then each root.

    A root must be a module whose ``forward`` is called (FSDP2 gathers parameters in forward hooks),
    so a task passes its model and each objective, never a ``ModuleDict``. Every parameter must end
    up in some root: ``ModelParallelStrategy`` does no other gradient reduction. The first rank's
    weights are broadcast first (see :func:`broadcast_from_first_rank`). With ``bf16`` parameters are
    gathered and computed in bfloat16 while gradients are reduced in float32; the sharded master
    weights and the optimiser state stay float32.
    """
    for root in roots:
        broadcast_from_first_rank(root, mesh)
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for root in roots:
        for unit in shard_units(root):
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        fully_shard(root, mesh=mesh, mp_policy=policy)
