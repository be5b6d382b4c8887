"""Reading and writing state dicts: safetensors, ``torch.save`` files, Lightning ``.ckpt`` and HF folders.

Everything is read with safetensors or ``torch.load(..., weights_only=True)``. A Lightning checkpoint
may also pickle objects of the training code (hyper-parameter containers, paths, ...), which
``weights_only`` refuses. Then only the tensors are wanted: the load is retried with an inert
stand-in for each such class, an empty ``OrderedDict`` that runs none of the original code, and only
``state_dict`` is returned. A checkpoint the stand-ins cannot get through fails with a message naming
the classes it pickles.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _stand_in(name: str) -> type:
    """An inert class to put in place of the pickled global ``name``.

    Building it, by call or by ``__new__``, gives an empty ``OrderedDict``: a container the
    ``weights_only`` unpickler lets fill by items (a dict subclass) or by ``__dict__`` (an object).
    """

    def __new__(cls: type, *args: Any, **kwargs: Any) -> OrderedDict[Any, Any]:
        return OrderedDict()

    module, _, qualname = name.rpartition(".")
    return type(qualname, (), {"__new__": __new__, "__module__": module})


def torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; pickled training-code objects
    come back as empty stand-ins (see the module docstring)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        try:  # the classes weights_only refuses, read from the pickle without running it
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (ValueError, RuntimeError):  # not a zip checkpoint (torch < 1.6's format)
            names = []
        if not names:
            raise ValueError(f"{path}: cannot be read with weights_only=True: {error}") from error
        stand_ins = [(_stand_in(name), name) for name in names]
        try:
            with torch.serialization.safe_globals(stand_ins):
                return torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, TypeError, ValueError, AttributeError) as retry_error:
            raise ValueError(
                f"{path}: pickles {names}, which weights_only=True refuses, and inert stand-ins for them "
                f"did not get through ({retry_error}). Save its state_dict alone (torch.save or "
                "safetensors) where you trust the file, and convert that."
            ) from retry_error


def _tensors_only(state: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    bad = sorted(k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor))
    if bad:
        raise ValueError(f"{source}: not a state dict, these entries are not named tensors: {bad[:10]}")
    return dict(state)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in a ``.safetensors`` file, a ``torch.save``'d state dict, or the ``state_dict``
    of a Lightning checkpoint (official ViLT's ``.ckpt``, a vlp run's ``last.ckpt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = torch_load(path)
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a state dict or a checkpoint")
    if "state_dict" in loaded:
        if not isinstance(loaded["state_dict"], Mapping):
            raise ValueError(
                f"{path}: 'state_dict' is a {type(loaded['state_dict']).__name__}, not a mapping"
            )
        return _tensors_only(loaded["state_dict"], f"{path}['state_dict']")
    return _tensors_only(loaded, str(path))


def _unshared(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors, each with storage of its own (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def write_state_dict(state: Mapping[str, Tensor], path: str | os.PathLike, lightning: bool = False) -> Path:
    """``.safetensors`` with safetensors; any other suffix with ``torch.save``: a plain dict of tensors,
    or ``{"state_dict": ...}`` as in a Lightning checkpoint with ``lightning=True``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(_unshared(state), str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": dict(state)} if lightning else dict(state), path)
    return path


def read_hf_folder(path: str | os.PathLike) -> tuple[dict[str, Tensor], Any]:
    """The state dict and the ``ViltConfig`` of a local Hugging Face model folder (``config.json``
    and ``model.safetensors`` / ``pytorch_model.bin``, or their sharded index). Nothing is downloaded."""
    from transformers import ViltConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder, no config.json")
    config = ViltConfig.from_json_file(str(path / "config.json"))
    for name in HF_WEIGHT_FILES:
        if (path / name).is_file():
            return read_state_dict(path / name), config
    for name in HF_INDEX_FILES:
        if (path / name).is_file():
            shards = sorted(set(json.loads((path / name).read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(read_state_dict(path / shard))
            return state, config
    raise FileNotFoundError(f"{path}: no weights, expected one of {HF_WEIGHT_FILES + HF_INDEX_FILES}")


def write_hf_folder(state: Mapping[str, Tensor], config: Any, path: str | os.PathLike) -> Path:
    """``config.json`` + ``model.safetensors``, loadable with ``ViltFor*.from_pretrained(path)``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    write_state_dict(state, path / "model.safetensors")
    return path
