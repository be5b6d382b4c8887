"""A vlp task's weights and the configs that build them, read from a run, a checkpoint or a pretrained folder.

:func:`read_task_weights` reads any of them into :class:`TaskWeights`; :func:`split_task_state` splits a
task's keys into the model's, each objective's head's and the rest; :func:`task_parts` finds the model and
head configs in a task config. The pretrained folder layout is described in :mod:`vlp.zoo.pretrained`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor

from vlp.checkpoints import torch_load

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
MODEL_PREFIX = "model."
HEAD_KEY = re.compile(r"objectives\.([^.]+)\.head\.(.+)")


@dataclass
class TaskWeights:
    """A vlp task's weights and what builds them, as read from a run, a checkpoint or a pretrained folder.

    Attributes:
        state: task-layout keys (``model.*``, ``objectives.<name>.head.*``, and whatever else the task holds).
        model_config: the model's ``class_path`` / ``init_args``; ``None`` when no config was found.
        head_configs: objective name → its head's ``class_path`` / ``init_args``.
        source: what was read.
        run_config: the run's whole resolved recipe (its ``config.yaml``), when read from a run.
        run_dir: the run folder, when known.
        step: the checkpoint's ``global_step``, when it records one.
        looked: the config files looked for, for a message when there was none.
    """

    state: dict[str, Tensor]
    model_config: dict[str, Any] | None
    head_configs: dict[str, dict[str, Any]]
    source: str
    run_config: dict[str, Any] | None = None
    run_dir: Path | None = None
    step: int | None = None
    looked: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- configs


def plain(value: Any, where: str = "config") -> Any:
    """``value`` as YAML-safe data: mappings (jsonargparse namespaces too) → dicts, sequences → lists."""
    if hasattr(value, "as_dict") and callable(value.as_dict):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{where}: a {type(value).__name__} has no place in a config file (give plain values)")


def is_class_config(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("class_path"), str)


def task_parts(task: Any, where: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The model config and the objectives' head configs of a task config (``class_path`` of an
    :class:`~vlp.tasks.base.ObjectiveTask`, ``init_args`` with ``model`` and ``objectives``)."""
    init = task.get("init_args") if isinstance(task, Mapping) else None
    model = (init or {}).get("model")
    if not is_class_config(model):
        raise ValueError(
            f"{where}: no model.init_args.model with a class_path; save_pretrained exports a task that holds "
            "a model and objectives (vlp.tasks.*)"
        )
    heads = {}
    for name, objective in ((init or {}).get("objectives") or {}).items():
        head = (objective.get("init_args") or {}).get("head") if isinstance(objective, Mapping) else None
        if is_class_config(head):
            heads[str(name)] = head
    return dict(model), heads


# ---------------------------------------------------------------------------------------------- reading


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: holds a {type(config).__name__}, not a mapping")
    return config


def _read_state(path: Path) -> tuple[dict[str, Tensor], int | None]:
    """The weights of a checkpoint (a Lightning ``.ckpt``, a sharded checkpoint folder, a ``.safetensors``
    or ``torch.save`` state dict) and its ``global_step`` when it records one; read once."""
    if path.is_dir():
        from vlp.zoo.consolidate import consolidate_checkpoint

        return consolidate_checkpoint(path), None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), None
    loaded = torch_load(path)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds neither a Lightning checkpoint nor a state dict of tensors")
    step = loaded.get("global_step") if state is not loaded else None
    return dict(state), int(step) if isinstance(step, int) else None


def _run_folder_of(checkpoint: Path) -> list[Path]:
    """Where a checkpoint's run folder may be: ``<run>/checkpoints/<file>`` or beside the file."""
    parent = checkpoint.resolve().parent
    return [parent.parent, parent] if parent.name == "checkpoints" else [parent]


def read_task_weights(source: str | os.PathLike[str]) -> TaskWeights:
    """A vlp task's weights and configs from a run folder (its current ``checkpoints/last.ckpt`` and its
    ``config.yaml``), one checkpoint of a run (the run folder's ``config.yaml`` found from it: a task's
    hyper-parameters leave the model and objectives out), a pretrained folder, or a lone state-dict file
    (no configs then)."""
    path = Path(source)
    if path.is_dir() and (path / WEIGHTS_FILE).is_file():
        return _read_pretrained_folder(path)
    if path.name == WEIGHTS_FILE and path.is_file() and (path.parent / CONFIG_FILE).is_file():
        return _read_pretrained_folder(path.parent)
    if path.is_dir() and not (path / ".metadata").is_file():  # a run folder, not a sharded checkpoint
        from vlp.runs import CHECKPOINTS, LAST, last_checkpoint

        checkpoint = last_checkpoint(path)
        if checkpoint is None:
            raise FileNotFoundError(
                f"{path}: neither a pretrained folder ({WEIGHTS_FILE}) nor a run folder with "
                f"{CHECKPOINTS}/{LAST}; name a checkpoint file instead"
            )
        return _read_checkpoint(checkpoint, [path])
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return _read_checkpoint(path, _run_folder_of(path))


def _read_checkpoint(checkpoint: Path, run_dirs: list[Path]) -> TaskWeights:
    state, step = _read_state(checkpoint)
    looked = [str(folder / CONFIG_FILE) for folder in run_dirs]
    for folder in run_dirs:
        if (folder / CONFIG_FILE).is_file():
            run_config = _read_config_file(folder / CONFIG_FILE)
            model, heads = task_parts(run_config.get("model"), f"{folder / CONFIG_FILE}: model")
            return TaskWeights(state, model, heads, str(checkpoint), run_config, folder, step, looked)
    return TaskWeights(state, None, {}, str(checkpoint), step=step, looked=looked)


def _read_pretrained_folder(path: Path) -> TaskWeights:
    from safetensors.torch import load_file

    model, heads = read_pretrained_config(path)
    return TaskWeights(load_file(str(path / WEIGHTS_FILE)), model, heads, str(path))


def read_pretrained_config(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``config.yaml`` of a pretrained folder: the model config and the head configs, checked."""
    file = path / CONFIG_FILE
    if not file.is_file():
        hint = (
            " (it holds config.json: a Hugging Face folder; vlp.zoo.vilt_build.load_hf_folder reads a ViLT one)"
            if (path / "config.json").is_file()
            else ""
        )
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a folder vlp.zoo.save_pretrained wrote{hint}")
    config = _read_config_file(file)
    unknown = sorted(set(config) - {"model", "heads"})
    if unknown or not is_class_config(config.get("model")):
        raise ValueError(
            f"{file}: expected `model: {{class_path, init_args}}` and optionally `heads: {{name: ...}}`"
            + (f"; unknown keys {unknown}" if unknown else "")
        )
    heads = config.get("heads") or {}
    if not isinstance(heads, Mapping):
        raise ValueError(f"{file}: heads is a {type(heads).__name__}, not a mapping of name to head config")
    bad = sorted(str(name) for name, head in heads.items() if not is_class_config(head))
    if bad:
        raise ValueError(f"{file}: heads {bad} have no class_path")
    return dict(config["model"]), {str(k): dict(v) for k, v in heads.items()}


def split_task_state(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]], list[str]]:
    """``model.*`` (prefix removed), ``objectives.<name>.head.*`` per objective (prefix removed), other keys."""
    model: dict[str, Tensor] = {}
    heads: dict[str, dict[str, Tensor]] = {}
    other = []
    for key, value in state.items():
        match = HEAD_KEY.fullmatch(key)
        if key.startswith(MODEL_PREFIX):
            model[key[len(MODEL_PREFIX) :]] = value
        elif match:
            heads.setdefault(match[1], {})[match[2]] = value
        else:
            other.append(key)
    return model, heads, sorted(other)
