"""The FSDP2 set-up checks every task's ``configure_model`` shares (:mod:`vlp.tasks.sharding`), in one process.

The sharding itself runs under two processes in ``test_distributed.py`` and its siblings; these are the
refusals, which need no process group: a stand-in task and mesh carry what the checks read.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn

from vlp.tasks.sharding import check_sharded, fsdp2_mesh


class StandInMesh:
    """What :func:`fsdp2_mesh` reads of a ``DeviceMesh``: dimension names, sizes and sub-meshes."""

    mesh_dim_names = ("data_parallel", "tensor_parallel")

    def __init__(self, data: int, tensor: int) -> None:
        self.shape = (data, tensor)

    def __getitem__(self, name: str) -> SimpleNamespace:
        size = self.shape[self.mesh_dim_names.index(name)]
        return SimpleNamespace(name=name, size=lambda: size)


def stand_in_task(strategy: object, mesh: StandInMesh) -> SimpleNamespace:
    trainer = SimpleNamespace(strategy=strategy)
    return SimpleNamespace(_trainer=trainer, trainer=trainer, model=nn.Linear(2, 2), device_mesh=mesh)


def test_the_data_parallel_dimension_is_the_mesh() -> None:
    mesh = fsdp2_mesh(stand_in_task(ModelParallelStrategy(), StandInMesh(2, 1)))
    assert mesh.name == "data_parallel" and mesh.size() == 2


def test_nothing_is_sharded_without_a_trainer_or_under_another_strategy() -> None:
    assert fsdp2_mesh(SimpleNamespace(_trainer=None)) is None
    assert fsdp2_mesh(stand_in_task(DDPStrategy(), StandInMesh(2, 1))) is None


def test_a_tensor_parallel_dimension_is_refused_naming_the_mesh_and_the_fix() -> None:
    with pytest.raises(ValueError) as error:
        fsdp2_mesh(stand_in_task(ModelParallelStrategy(), StandInMesh(1, 2)))
    message = str(error.value)
    assert "{'data_parallel': 1, 'tensor_parallel': 2}" in message
    assert "set data_parallel_size to the number of processes" in message
    assert "tensor_parallel_size: 1" in message


def test_parameters_left_outside_the_roots_are_named() -> None:
    params = [("model.w", nn.Parameter(torch.zeros(1))), ("extra.b", nn.Parameter(torch.zeros(1)))]
    with pytest.raises(
        RuntimeError, match=r"outside the model and objectives were not sharded: \['model.w', 'extra.b'\]"
    ):
        check_sharded(params, "the model and objectives")
    check_sharded([], "the model and objectives")  # nothing outside: no error
