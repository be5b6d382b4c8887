"""Your own models as folders anyone can load, and loading by folder or zoo name: ``save_pretrained``, ``load``.

A pretrained folder, as :func:`save_pretrained` writes it::

    <out_dir>/model.safetensors  the weights in a task's key layout: model.* and objectives.<name>.head.*
    <out_dir>/config.yaml        model: {class_path, init_args} of the model; heads: {<name>: {...}} per head
    <out_dir>/README.md          the model card: what it is, sizes, parameters, training recipe and metrics

:func:`load` (``vlp.zoo.load``) rebuilds the model from ``config.yaml`` with jsonargparse, as a recipe's
``model`` is built, so the recipe that trained it is not needed, and loads the weights strictly: a missing,
unexpected or mis-shaped key fails, naming it. :func:`load_pretrained` gives the heads too. A zoo name
(``family:tag``, ``python -m vlp zoo list``) loads the same way from the converted published weights.

``model.safetensors`` keeps a task's key names, so a recipe can also start from it by name:
``init_from: <out_dir>/model.safetensors``.

Runs, checkpoints and folders are read by :mod:`vlp.zoo.task_weights`; the card is :mod:`vlp.zoo.model_card`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from argparse import ArgumentError
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from vlp.checkpoints import check_state_matches
from vlp.errors import UserError
from vlp.zoo.model_card import model_card
from vlp.zoo.task_weights import (
    CONFIG_FILE,
    MODEL_PREFIX,
    WEIGHTS_FILE,
    TaskWeights,
    is_class_config,
    plain,
    read_pretrained_config,
    read_task_weights,
    split_task_state,
    task_parts,
)

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
# init_args that make a module read weights from elsewhere while it is built (a timm file, a VQGAN task
# checkpoint, timm's download): a pretrained folder's own weights replace them, so they are switched off
WEIGHT_SOURCE_ARGS: dict[str, Any] = {"init_from": None, "checkpoint": None, "pretrained": False}


@dataclass
class Pretrained:
    """A loaded model and its heads.

    Attributes:
        model: the model (``model.*`` keys), in eval mode.
        heads: objective name → head (``objectives.<name>.head.*``), in eval mode; empty for a zoo name,
            whose heads reach a task through ``init_from: zoo:<family>:<tag>``.
        config: ``{"model": {...}, "heads": {...}}``, what the modules were built from.
        source: the folder or the zoo name.
    """

    model: nn.Module
    heads: dict[str, nn.Module]
    config: dict[str, Any]
    source: str


# ---------------------------------------------------------------------------------------------- configs


def _without_weight_sources(config: Any, where: str, removed: list[str]) -> Any:
    """``config`` with every :data:`WEIGHT_SOURCE_ARGS` argument of its classes switched off; each one
    switched off is added to ``removed`` as ``key: value``."""
    if isinstance(config, list):
        return [_without_weight_sources(v, f"{where}[{i}]", removed) for i, v in enumerate(config)]
    if not isinstance(config, dict):
        return config
    out = {}
    for key, value in config.items():
        here = f"{where}.{key}"
        if key == "init_args" and is_class_config(config) and isinstance(value, dict):
            value = dict(value)
            for name, off in WEIGHT_SOURCE_ARGS.items():
                if name in value and value[name] not in (None, off):
                    removed.append(f"{here}.{name}: {value[name]}")
                    value[name] = off
        out[key] = _without_weight_sources(value, here, removed)
    return out


def build_module(config: Mapping[str, Any], what: str, meta: bool = False) -> nn.Module:
    """The ``nn.Module`` of a ``class_path`` / ``init_args`` config, built by jsonargparse as a recipe's
    classes are; with ``meta``, on the meta device (shapes only, no memory, no initialisation)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "module", required=True)
    try:
        parsed = parser.parse_object({"module": dict(config)})
    except ArgumentError as error:
        raise ValueError(f"{what}: the config does not build: {error}") from error
    with torch.device("meta") if meta else contextlib.nullcontext():
        return parser.instantiate(parsed).module


def _build_shapes(config: Mapping[str, Any], what: str) -> nn.Module:
    """:func:`build_module` on the meta device, or on the CPU for a constructor with an operation the meta
    device has no kernel for."""
    try:
        return build_module(config, what, meta=True)
    except (NotImplementedError, RuntimeError):
        return build_module(config, what)


def instantiate_loaded(config: Mapping[str, Any], state: Mapping[str, Tensor], what: str) -> nn.Module:
    """Build ``config`` and load ``state`` strictly, in eval mode.

    The module is built on the meta device and takes the loaded tensors as they are (no random
    initialisation that the weights would overwrite); a module that keeps a buffer outside its state
    dict, or cannot be built on the meta device, is built on the CPU and loaded into instead.

    Raises:
        KeyError: naming every missing, unexpected or mis-shaped key.
    """
    module = _build_shapes(config, what)
    check_state_matches(module.state_dict(), state, f"{what}: the weights and the config")
    module.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in chain(module.parameters(), module.buffers())):
        module = build_module(config, what)
        module.load_state_dict(state, strict=True)
    return module.eval()


# ---------------------------------------------------------------------------------------------- saving


def _from_pair(module: nn.Module, config: Any) -> TaskWeights:
    """An in-memory ``(module, config)``: a task with its task config (or a whole run config), or a
    model with its own config."""
    config = plain(config)
    if not isinstance(config, dict):
        raise ValueError(
            f"save_pretrained: the config of a (module, config) pair is a {type(config).__name__}"
        )
    whole_run = "model" in config and "class_path" not in config
    task = config["model"] if whole_run else config
    if is_class_config(task) and is_class_config((task.get("init_args") or {}).get("model")):
        model, heads = task_parts(task, "save_pretrained: the task config")
        source = f"a {type(module).__name__} in memory"
        return TaskWeights(dict(module.state_dict()), model, heads, source, config if whole_run else None)
    if not is_class_config(config):
        raise ValueError("save_pretrained: the config of a (module, config) pair has no class_path")
    state = {MODEL_PREFIX + key: value for key, value in module.state_dict().items()}
    return TaskWeights(state, config, {}, f"a {type(module).__name__} in memory")


def _refuse_existing(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"save_pretrained: {out} already exists and is not an empty folder; give a new or empty folder "
            "(nothing is ever overwritten)"
        )


def save_pretrained(
    source: str | os.PathLike[str] | tuple[nn.Module, Any],
    out_dir: str | os.PathLike[str],
    heads: Sequence[str] | None = None,
) -> Path:
    """Write a pretrained folder (see the module docstring) from a vlp run or model.

    Args:
        source: a run folder (its current ``checkpoints/last.ckpt`` and ``config.yaml``), one of a run's
            checkpoints (``config.yaml`` is read from its run folder), or an in-memory ``(module, config)``:
            a task and its task config (``class_path`` / ``init_args``, or the whole run config), or a
            model and the model's own config.
        out_dir: a new or empty folder; anything else is refused before reading the source.
        heads: the objectives whose heads to keep (default: all the config has).

    The configs' weight sources (:data:`WEIGHT_SOURCE_ARGS`: a ViT embedder's ``init_from`` file, a VQ
    embedder's VQGAN ``checkpoint``, timm's ``pretrained``) are switched off in ``config.yaml``: the folder's
    weights replace them. The model and heads are built from the written configs on the meta device and
    checked to take the weights strictly before anything is written. Task keys outside ``model.*`` and the
    kept heads are left out and listed in the model card.
    """
    out = Path(out_dir)
    _refuse_existing(out)
    weights = _from_pair(*source) if isinstance(source, tuple) else read_task_weights(source)
    if weights.model_config is None:
        raise FileNotFoundError(
            f"save_pretrained: {weights.source} comes with no recipe saying how to build its model "
            f"(looked for {', '.join(weights.looked)}); give its run folder or (module, config)"
        )
    model_state, head_states, other = split_task_state(weights.state)
    keep = (
        sorted(weights.head_configs) if heads is None else [heads] if isinstance(heads, str) else list(heads)
    )
    unknown = sorted(set(keep) - set(weights.head_configs))
    if unknown:
        raise UserError(
            f"save_pretrained: no heads {unknown} in {weights.source} (heads: {sorted(weights.head_configs)})"
        )
    without_config = sorted(set(head_states) - set(weights.head_configs))
    if without_config:
        raise ValueError(
            f"save_pretrained: {weights.source} has weights objectives.<name>.head.* for {without_config} "
            "but its config has no head for them"
        )
    left_out = other + [
        f"objectives.{name}.head.* ({len(head_states[name])} tensors: heads={keep})"
        for name in sorted(set(head_states) - set(keep))
    ]
    removed: list[str] = []
    config = {
        "model": _without_weight_sources(plain(weights.model_config), "model", removed),
        "heads": {
            n: _without_weight_sources(plain(weights.head_configs[n]), f"heads.{n}", removed) for n in keep
        },
    }
    _check_builds(config, model_state, {name: head_states.get(name, {}) for name in keep}, weights.source)
    state = {MODEL_PREFIX + key: value for key, value in model_state.items()}
    for name in keep:
        state.update({f"objectives.{name}.head.{key}": v for key, v in head_states.get(name, {}).items()})
    if left_out:
        log.warning("save_pretrained: left out of %s: %s", out, ", ".join(left_out))
    _write(out, state, config, model_card(out, weights, config, state, left_out, removed))
    return out


def _check_builds(
    config: dict[str, Any],
    model_state: Mapping[str, Tensor],
    head_states: Mapping[str, Mapping[str, Tensor]],
    source: str,
) -> None:
    """The written configs build modules that take exactly these weights (on the meta device)."""
    model = _build_shapes(config["model"], f"{source}: model")
    check_state_matches(model.state_dict(), model_state, f"{source}: the model's weights and its config")
    for name, head_config in config["heads"].items():
        head = _build_shapes(head_config, f"{source}: head {name}")
        check_state_matches(
            head.state_dict(), head_states[name], f"{source}: head {name}'s weights and config"
        )


def _write(out: Path, state: Mapping[str, Tensor], config: dict[str, Any], card: str) -> None:
    from vlp.zoo.files import write_state_dict

    out.mkdir(parents=True, exist_ok=True)
    write_state_dict(state, out / WEIGHTS_FILE)
    header = "# Written by vlp.zoo.save_pretrained; vlp.zoo.load(<this folder>) builds the model from it.\n"
    (out / CONFIG_FILE).write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (out / CARD_FILE).write_text(card, encoding="utf-8")


# ---------------------------------------------------------------------------------------------- loading


def load(name_or_dir: str | os.PathLike[str]) -> nn.Module:
    """The model of a pretrained folder or a zoo name (``family:tag``), weights loaded strictly, eval mode.

    See :func:`load_pretrained` for the heads too.
    """
    return load_pretrained(name_or_dir).model


def load_pretrained(name_or_dir: str | os.PathLike[str]) -> Pretrained:
    """A pretrained folder (:func:`save_pretrained`) or a zoo name, built and loaded strictly.

    A folder: the model and the heads from ``config.yaml``, the weights from ``model.safetensors``; every
    key must fit (a missing, unexpected or mis-shaped one is named). A zoo name ``family:tag`` (or
    ``zoo:family:tag``): the entry fetched, verified and converted (:func:`vlp.zoo.pipeline.convert_entry`),
    the model built from the conversion's ``model_config`` and its ``model.*`` keys loaded strictly; no
    heads (a task takes them by ``init_from: zoo:<name>``). An entry that is only a part of a model (a timm
    ViT, a ResNet) is refused: it starts a recipe's model through ``init_from``.
    """
    path = Path(name_or_dir)
    if path.is_dir():
        return _load_folder(path)
    name = os.fspath(name_or_dir)
    if ":" in name and not path.exists():
        return _load_entry(name)
    raise FileNotFoundError(
        f"{name}: neither a folder vlp.zoo.save_pretrained wrote nor a zoo name family:tag "
        "(python -m vlp zoo list shows them)"
    )


def _load_folder(path: Path) -> Pretrained:
    from safetensors.torch import load_file

    model_config, head_configs = read_pretrained_config(path)
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE}")
    model_state, head_states, other = split_task_state(load_file(str(path / WEIGHTS_FILE)))
    unmatched = sorted(set(head_states) ^ set(head_configs))
    if other or unmatched:
        raise KeyError(
            f"{path / WEIGHTS_FILE} does not match {path / CONFIG_FILE}: "
            + "; ".join(
                ([f"keys outside model.* and objectives.<name>.head.*: {other[:10]}"] if other else [])
                + ([f"heads in only one of the two: {unmatched}"] if unmatched else [])
            )
        )
    model = instantiate_loaded(model_config, model_state, f"{path}: model")
    heads = {
        name: instantiate_loaded(config, head_states[name], f"{path}: head {name}")
        for name, config in head_configs.items()
    }
    return Pretrained(model, heads, {"model": model_config, "heads": head_configs}, str(path))


def _load_entry(name: str) -> Pretrained:
    from vlp.zoo.pipeline import convert_entry, entry_of

    entry = entry_of(name)
    converted = convert_entry(entry)
    if converted.model_config is None:
        raise UserError(
            f"zoo entry {entry.name} is a part of a model, not a whole one; start a recipe's model from it "
            f"with `init_from: zoo:{entry.name}`"
        )
    model_state, _, _ = split_task_state(converted.state)
    model = instantiate_loaded(converted.model_config, model_state, f"{entry.name}: model")
    return Pretrained(model, {}, {"model": converted.model_config, "heads": {}}, entry.name)
