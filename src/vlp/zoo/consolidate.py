"""Consolidate a sharded (FSDP2 / DCP) Lightning checkpoint into one full state dict.

Under ``ModelParallelStrategy`` a checkpoint such as ``step=1000.ckpt`` is a directory: the
``torch.distributed.checkpoint`` (DCP) shards of ``{"state_dict": ..., "optimizer_0": ...}`` written
by every rank, plus Lightning's ``meta.pt`` (loops, schedulers, hyper-parameters). Reading it back
needs no process group and no particular world size: DCP reassembles each tensor from its chunks.
Only the model weights are read (``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` would
also materialise the optimiser state, twice the model's size for AdamW).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

STATE_DICT_KEY = "state_dict"


def consolidate_checkpoint(path: str | os.PathLike, prefix: str = "") -> dict[str, Tensor]:
    """The full (unsharded) model state dict of a sharded Lightning checkpoint directory, on the CPU.

    Keys are the task's own (``model.encoder.blocks.0.attn.qkv.weight``, ``objectives.itm.head.fc.weight``
    ...), so the result loads with ``task.load_state_dict(state)`` into a task built from the same
    config. ``prefix`` keeps only the keys under it and strips it: ``prefix="model."`` gives the
    assembly's state dict (e.g. a :class:`~vlp.models.vilt.ViLT`) without the objectives' heads.
    Tensors keep the dtype they were saved in (float32 master weights under bf16-mixed).
    """
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path}: not a sharded (DCP) checkpoint directory, no .metadata file")
    reader = dcp.FileSystemReader(path)
    metadata = reader.read_metadata()
    head = f"{STATE_DICT_KEY}."
    state: dict[str, Tensor] = {}
    for key, item in metadata.state_dict_metadata.items():
        if not key.startswith(head):
            continue  # optimizer_0.* and the like
        name = key[len(head) :]
        if not isinstance(item, TensorStorageMetadata):
            raise ValueError(f"{path}: model entry {name!r} is not a tensor ({type(item).__name__})")
        if name.startswith(prefix):
            state[name] = torch.empty(item.size, dtype=item.properties.dtype)
    if not state:
        raise ValueError(
            f"{path}: no model weights under {STATE_DICT_KEY!r}"
            + (f" with prefix {prefix!r}" if prefix else "")
        )
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": one process is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({STATE_DICT_KEY: state}, storage_reader=reader, no_dist=True)
    return {name[len(prefix) :]: tensor for name, tensor in state.items()}


def save_consolidated(path: str | os.PathLike, out: str | os.PathLike, prefix: str = "") -> Path:
    """Write :func:`consolidate_checkpoint`'s state dict as one file for the zoo.

    ``.safetensors`` is written with safetensors; any other suffix with ``torch.save`` (a plain dict
    of tensors, loadable with ``torch.load(..., weights_only=True)``).
    """
    state = consolidate_checkpoint(path, prefix)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    else:
        torch.save(state, out)
    return out
