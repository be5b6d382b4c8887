"""Safe loading: checkpoints pickling data containers of training code load (as inert stand-ins); a
checkpoint naming any other global is refused by every reader before anything is loaded or run."""

from __future__ import annotations

import argparse
import builtins
import os
import pathlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import AttributeDict
from omegaconf import OmegaConf

from vlp.checkpoints import read_state_dict, torch_load
from vlp.tasks.init_from import read_checkpoint
from vlp.zoo.fetch import read_entry_state
from vlp.zoo.registry import get_entry

STATE = {"layer.weight": torch.arange(6.0).reshape(2, 3), "layer.bias": torch.ones(2)}
LIGHTNING = get_entry("vilt:b32-mlm-itm")  # container_key "state_dict"
DETR = get_entry("detr:r50")  # container_key "model"


class SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def readers() -> dict[str, Callable[[Path], object]]:
    return {
        "torch_load": torch_load,
        "read_state_dict": read_state_dict,
        "read_checkpoint": read_checkpoint,
        "read_entry_state": lambda path: read_entry_state(LIGHTNING, path),
    }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "torch<1.6 format"])
@pytest.mark.parametrize(("payload", "name"), [(SystemCall, "posix.system"), (Exec, "builtins.exec")])
def test_a_checkpoint_that_would_run_code_is_refused_by_every_reader(
    tmp_path: Path, payload: type, name: str, zip_format: bool
) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    checkpoint = {"state_dict": STATE, "hyper_parameters": AttributeDict(lr=1e-4), "x": payload(marker)}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    for reader_name, reader in readers().items():
        with pytest.raises(ValueError) as error:
            reader(path)
        message = str(error.value)
        assert f"{path}: refused, nothing was loaded" in message, reader_name
        assert f"['{name}']" in message and "weights_only=False" in message, reader_name
    assert not marker.exists()


def test_a_detr_checkpoint_with_its_args_namespace_loads(tmp_path: Path) -> None:
    """DETR's releases are torch < 1.6 files holding the model and the training's argparse.Namespace."""
    args = argparse.Namespace(lr=1e-4, output_dir=pathlib.Path("/runs/detr"), backbone="resnet50")
    for zip_format in (True, False):
        path = tmp_path / f"detr-{zip_format}.pth"
        torch.save(
            {"model": STATE, "args": args, "epoch": 499}, path, _use_new_zipfile_serialization=zip_format
        )
        state = read_entry_state(DETR, path)
        assert state.keys() == STATE.keys() and all(torch.equal(state[k], STATE[k]) for k in STATE)
        assert torch_load(path)["args"].lr == 1e-4  # a stand-in: the namespace's values as attributes


def test_a_lightning_checkpoint_with_hyper_parameter_containers_loads(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    checkpoint = {
        "epoch": 3,
        "state_dict": STATE,
        "hyper_parameters": AttributeDict(lr=1e-4, sizes=OmegaConf.create({"hidden": 32, "layers": [2, 2]})),
        "callbacks": {
            "ModelCheckpoint": {"best_model_score": np.float64(0.5), "dirpath": pathlib.Path("/r")}
        },
    }
    torch.save(checkpoint, path)
    for reader_name, reader in readers().items():
        loaded = reader(path)
        state = loaded["state_dict"] if reader_name == "torch_load" else loaded
        assert state.keys() == STATE.keys(), reader_name
        assert all(torch.equal(state[k], STATE[k]) for k in STATE), reader_name
    hyper_parameters = torch_load(path)["hyper_parameters"]
    assert type(hyper_parameters) is not AttributeDict and hyper_parameters["lr"] == 1e-4  # a stand-in
