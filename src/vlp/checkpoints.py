"""Checkpoint files are opened here, and only here: safetensors or ``torch.load(..., weights_only=True)``.

A Lightning checkpoint may pickle objects of the training code (hyper-parameter containers, paths, ...),
which ``weights_only`` refuses. Then only the tensors are wanted: the load is retried with an inert
stand-in for each such class, an empty ``OrderedDict`` that runs none of the original code. A checkpoint
the stand-ins cannot get through fails with a message naming the classes it pickles; nothing in a file is
ever executed.

:func:`check_state_matches` is the one strict comparison of a module's state dict with weights to load,
shared by the loaders that must name every key that does not fit (``load_state_dict``'s own error stops at
the first shape mismatch).
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def check_state_matches(own: Mapping[str, Tensor], given: Mapping[str, Tensor], what: str) -> None:
    """Raise a ``KeyError`` naming ``what`` and every missing, unexpected or mis-shaped key of ``given``
    against ``own``; return quietly when every key and shape matches."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [
        f"{key}: {tuple(given[key].shape)} given vs {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(given))
        if given[key].shape != own[key].shape
    ]
    if missing or unexpected or shapes:
        raise KeyError(
            f"{what} do not match: missing {missing}, unexpected {unexpected}, shape mismatches {shapes}"
        )


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


def load_existing(path: str | os.PathLike, missing: str) -> Any:
    """:func:`torch_load` of a file a setting names; ``missing`` is the whole error when there is no such
    file (it names the setting and how to make the file)."""
    if not Path(path).is_file():
        raise FileNotFoundError(missing)
    return torch_load(path)


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
