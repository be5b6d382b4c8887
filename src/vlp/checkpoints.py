"""Checkpoint files are opened here, and only here: safetensors or ``torch.load(..., weights_only=True)``.

A Lightning checkpoint may pickle data containers of the training code beside its tensors: hyper-parameters in
an ``argparse.Namespace``, a Lightning ``AttributeDict`` or an omegaconf config, paths, numpy scalars, the
callback classes old Lightning keyed its callback states by. ``weights_only`` refuses those. :func:`torch_load`
reads every global a file's pickle names first, without unpickling it, and then:

- each name on :data:`SAFE_GLOBALS` (those containers, by ``module.qualname``) is loaded as an inert
  stand-in: a class with none of the original code, whose instances are an empty ``OrderedDict`` (filled by
  items or attributes as the pickle says), an empty list, or an empty object that drops its state;
- any other global ``weights_only`` does not allow itself (``os.system``, ``builtins.exec``, a class of an
  unknown module) refuses the whole file before anything is loaded, naming the file and the globals, and
  saying how to re-save the state dict alone where the file is trusted.

Only the tensors are wanted from such a file; nothing in a file is ever executed, and nothing is imported
for it. :func:`check_state_matches` is the one strict comparison of a module's state dict with weights to
load, shared by the loaders that must name every key that does not fit (``load_state_dict``'s own error stops
at the first shape mismatch).
"""

from __future__ import annotations

import fnmatch
import io
import os
import pickle
import pickletools
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

# What a stand-in's instance is: an empty OrderedDict ("mapping": weights_only fills it by items or sets
# attributes on it), an empty list ("list": filled by appends) or an empty object ("object": its pickled
# state is dropped; for values rebuilt from a state weights_only cannot set on an OrderedDict).
MAPPING, LIST, OBJECT = "mapping", "list", "object"
_PATHS = ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")
_BUILTIN_TYPES = ("bool", "int", "float", "str", "bytes", "list", "tuple", "dict", "frozenset")

SAFE_GLOBALS: dict[str, str] = {
    # hyper-parameter containers
    "argparse.Namespace": MAPPING,  # DETR pickles its args
    "jsonargparse._namespace.Namespace": MAPPING,
    "jsonargparse.namespace.Namespace": MAPPING,
    "lightning.fabric.utilities.data.AttributeDict": MAPPING,
    "lightning_fabric.utilities.data.AttributeDict": MAPPING,
    "lightning.pytorch.utilities.parsing.AttributeDict": MAPPING,
    "pytorch_lightning.utilities.parsing.AttributeDict": MAPPING,
    "omegaconf.dictconfig.DictConfig": MAPPING,
    "omegaconf.listconfig.ListConfig": MAPPING,
    "omegaconf.base.Metadata": MAPPING,
    "omegaconf.base.ContainerMetadata": MAPPING,
    "omegaconf.nodes.*Node": MAPPING,
    "typing.Any": OBJECT,  # omegaconf's metadata
    # Lightning < 1.5 keyed a checkpoint's callback states by the callback's class
    "pytorch_lightning.callbacks.*": OBJECT,
    "lightning.pytorch.callbacks.*": OBJECT,
    # containers of the standard library (OrderedDict, Counter and set weights_only allows itself)
    "collections.defaultdict": MAPPING,
    "collections.deque": LIST,
    **{f"builtins.{name}": OBJECT for name in _BUILTIN_TYPES},  # omegaconf's types, defaultdict factories
    **{f"pathlib.{name}": OBJECT for name in _PATHS},
    **{f"pathlib._local.{name}": OBJECT for name in _PATHS},  # Python >= 3.13
    # numpy scalars, arrays and dtypes (a logged metric, a hyper-parameter), numpy 1 and 2 names
    "numpy.core.multiarray.scalar": OBJECT,
    "numpy._core.multiarray.scalar": OBJECT,
    "numpy.core.multiarray._reconstruct": OBJECT,
    "numpy._core.multiarray._reconstruct": OBJECT,
    "numpy.ndarray": OBJECT,
    "numpy.dtype": OBJECT,
    "numpy.dtypes.*DType": OBJECT,
}


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


def safe_kind(name: str) -> str | None:
    """What the stand-in for the pickled global ``name`` builds (see :data:`SAFE_GLOBALS`); ``None``: refused."""
    for pattern, kind in SAFE_GLOBALS.items():
        if fnmatch.fnmatchcase(name, pattern):
            return kind
    return None


def _stand_in(name: str, kind: str) -> type:
    """An inert class to put in place of the pickled global ``name``: calling it or its ``__new__`` builds
    the empty instance ``kind`` says, whatever the arguments; it runs none of the original code."""

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if kind == MAPPING:
            return OrderedDict()
        if kind == LIST:
            return []
        return object.__new__(cls)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self: Any, state: Any) -> None:
        pass  # the pickled state is dropped

    def __repr__(self: Any) -> str:
        return f"<stand-in for {name}>"

    module, _, qualname = name.rpartition(".")
    namespace = {"__new__": __new__, "__init__": __init__, "__setstate__": __setstate__, "__repr__": __repr__}
    return type(qualname, (), {**namespace, "__module__": module})


def _globals_in(stream: IO[bytes], pickles: int) -> set[str]:
    names: set[str] = set()
    for _ in range(pickles):
        for opcode, arg, _pos in pickletools.genops(stream):
            if opcode.name in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                # protocol 2 names Python 2's modules (__builtin__.long): read them as weights_only does
                if (module, qualname) in NAME_MAPPING:
                    module, qualname = NAME_MAPPING[(module, qualname)]
                else:
                    module = IMPORT_MAPPING.get(module, module)
                names.add(f"{module}.{qualname}")
    return names


def pickled_globals(path: str | os.PathLike) -> set[str]:
    """Every global (``module.qualname``) the pickle of a ``torch.save`` file names, read without
    unpickling it: the ``data.pkl`` record of a zip checkpoint, or the first four pickles of torch < 1.6's
    format (magic number, protocol, system info, the object)."""
    with open(path, "rb") as file:
        try:
            if file.read(4) == b"PK\x03\x04":  # a zip archive's first record, as torch.load tells them
                with zipfile.ZipFile(file) as archive:
                    records = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
                    if not records:
                        raise ValueError("a zip file without the data.pkl record of a torch.save checkpoint")
                    return _globals_in(io.BytesIO(archive.read(records[0])), pickles=1)
            file.seek(0)
            return _globals_in(file, pickles=4)
        except (ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: not a torch.save checkpoint ({error})") from error


def _weights_only_allows() -> set[str]:
    # the globals torch itself allows under weights_only (tensors, storages, dtypes, OrderedDict, ...):
    # the same set torch.serialization.get_unsafe_globals_in_checkpoint uses, which reads zip files only
    return set(torch._weights_only_unpickler._get_allowed_globals())


def _refuse(path: str | os.PathLike, refused: list[str]) -> ValueError:
    return ValueError(
        f"{path}: refused, nothing was loaded: its pickle names {refused}, which are not data containers "
        "vlp reads from checkpoints (vlp.checkpoints.SAFE_GLOBALS); unpickling them could run code. If you "
        'trust the file, re-save its state dict alone where its code is installed, e.g. python -c "import '
        f"torch; torch.save(torch.load('{path}', weights_only=False)['state_dict'], 'state.pt')\" (the key "
        "holding the weights: 'state_dict' for Lightning, 'model' for DETR), and load state.pt instead."
    )


def torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with inert stand-ins for the data
    containers of :data:`SAFE_GLOBALS`; a file naming any other global ``weights_only`` does not allow is
    refused before anything is loaded (see the module docstring)."""
    unsafe = sorted(pickled_globals(path) - _weights_only_allows())
    refused = [name for name in unsafe if safe_kind(name) is None]
    if refused:
        raise _refuse(path, refused)
    stand_ins = [(_stand_in(name, safe_kind(name) or OBJECT), name) for name in unsafe]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        with_stand_ins = f" (with inert stand-ins for {unsafe})" if unsafe else ""
        raise ValueError(
            f"{path}: cannot be read with weights_only=True{with_stand_ins}: {error}. Save its state_dict "
            "alone (torch.save or safetensors) where you trust the file, and load that."
        ) from error


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
