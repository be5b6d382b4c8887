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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlp.checkpoints import read_state_dict

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


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
