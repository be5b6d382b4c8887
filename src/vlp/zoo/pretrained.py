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
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
from argparse import ArgumentError
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from vlp.checkpoints import check_state_matches, torch_load
from vlp.errors import UserError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
RUN_METRICS = "metrics.csv"
MODEL_PREFIX = "model."
HEAD_KEY = re.compile(r"objectives\.([^.]+)\.head\.(.+)")
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


def _is_class_config(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("class_path"), str)


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
        if key == "init_args" and _is_class_config(config) and isinstance(value, dict):
            value = dict(value)
            for name, off in WEIGHT_SOURCE_ARGS.items():
                if name in value and value[name] not in (None, off):
                    removed.append(f"{here}.{name}: {value[name]}")
                    value[name] = off
        out[key] = _without_weight_sources(value, here, removed)
    return out


def task_parts(task: Any, where: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The model config and the objectives' head configs of a task config (``class_path`` of an
    :class:`~vlp.tasks.base.ObjectiveTask`, ``init_args`` with ``model`` and ``objectives``)."""
    init = task.get("init_args") if isinstance(task, Mapping) else None
    model = (init or {}).get("model")
    if not _is_class_config(model):
        raise ValueError(
            f"{where}: no model.init_args.model with a class_path; save_pretrained exports a task that holds "
            "a model and objectives (vlp.tasks.*)"
        )
    heads = {}
    for name, objective in ((init or {}).get("objectives") or {}).items():
        head = (objective.get("init_args") or {}).get("head") if isinstance(objective, Mapping) else None
        if _is_class_config(head):
            heads[str(name)] = head
    return dict(model), heads


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

    model, heads = _pretrained_config(path)
    return TaskWeights(load_file(str(path / WEIGHTS_FILE)), model, heads, str(path))


def _pretrained_config(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
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
    if unknown or not _is_class_config(config.get("model")):
        raise ValueError(
            f"{file}: expected `model: {{class_path, init_args}}` and optionally `heads: {{name: ...}}`"
            + (f"; unknown keys {unknown}" if unknown else "")
        )
    heads = config.get("heads") or {}
    if not isinstance(heads, Mapping):
        raise ValueError(f"{file}: heads is a {type(heads).__name__}, not a mapping of name to head config")
    bad = sorted(str(name) for name, head in heads.items() if not _is_class_config(head))
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
    if _is_class_config(task) and _is_class_config((task.get("init_args") or {}).get("model")):
        model, heads = task_parts(task, "save_pretrained: the task config")
        source = f"a {type(module).__name__} in memory"
        return TaskWeights(dict(module.state_dict()), model, heads, source, config if whole_run else None)
    if not _is_class_config(config):
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


# ---------------------------------------------------------------------------------------------- model card


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _scalars(init_args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in init_args.items() if isinstance(v, (bool, int, float, str)))


def _part_lines(config: Mapping[str, Any]) -> Iterator[str]:
    """One line per part of a model config: its class and scalar arguments; then the model's own scalars."""
    init = config.get("init_args") or {}
    for name, value in init.items():
        if _is_class_config(value):
            yield f"- `{name}`: {_short(value['class_path'])}({_scalars(value.get('init_args') or {})})"
    own = _scalars(init)
    if own:
        yield f"- {_short(config['class_path'])}: {own}"


def _count(state: Mapping[str, Tensor], prefix: str) -> int:
    return sum(t.numel() for k, t in state.items() if k.startswith(prefix))


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 10_000 else str(count)


def validation_metrics(run_dir: Path, step: int | None) -> tuple[dict[str, float], int | None]:
    """The last logged value of every ``val/*`` metric in the run's ``metrics.csv`` (at or before
    ``step`` when given), and the step of the latest of them."""
    path = run_dir / RUN_METRICS
    if not path.is_file():
        return {}, None
    values: dict[str, float] = {}
    last: int | None = None
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            try:
                row_step = int(float(row.get("step") or "nan"))
            except ValueError:
                continue
            if step is not None and row_step > step:
                continue
            for name, value in row.items():
                if name and name.startswith("val/") and value not in (None, ""):
                    values[name] = float(value)
                    last = row_step if last is None else max(last, row_step)
    return values, last


def _recipe_lines(run: Mapping[str, Any]) -> Iterator[str]:
    task = run.get("model") or {}
    init = task.get("init_args") or {}
    yield f"- task: {task.get('class_path')}"
    weights = init.get("loss_weights") or {}
    objectives = [f"{name} (weight {weights.get(name, 1.0)})" for name in init.get("objectives") or {}]
    if objectives:
        yield f"- objectives: {', '.join(objectives)}"
    optimiser = {k: init[k] for k in ("lr", "weight_decay", "warmup", "end_lr_ratio") if k in init}
    if optimiser:
        yield "- AdamW: " + ", ".join(f"{k} {v}" for k, v in optimiser.items())
    if init.get("init_from"):
        yield f"- started from: {init['init_from']}"
    trainer = run.get("trainer") or {}
    settings = {k: trainer[k] for k in ("max_steps", "precision", "devices", "num_nodes") if k in trainer}
    if settings:
        yield "- trainer: " + ", ".join(f"{k} {v}" for k, v in settings.items())
    if "seed_everything" in run:
        yield f"- seed: {run['seed_everything']}"
    data = run.get("data") or {}
    if data:
        root = (data.get("init_args") or {}).get("root")
        yield f"- data: {data.get('class_path')}" + (f" from {root}" if root else "")


def model_card(
    out: Path,
    weights: TaskWeights,
    config: Mapping[str, Any],
    state: Mapping[str, Tensor],
    left_out: Sequence[str],
    removed: Sequence[str],
) -> str:
    """The folder's README.md: what it is, sizes, parameters, the recipe and metrics of its run, how to load."""
    model_class = config["model"]["class_path"]
    heads = config["heads"]
    total = sum(t.numel() for t in state.values())
    lines = [
        f"# {out.name}",
        "",
        f"A vlp `{model_class}`"
        + (f" with heads {', '.join(f'`{h}`' for h in heads)}" if heads else "")
        + f", exported by `vlp.zoo.save_pretrained` from `{weights.source}`"
        + (f" (step {weights.step})" if weights.step is not None else "")
        + ".",
        "",
        "## Sizes",
        "",
        *_part_lines(config["model"]),
        "",
        f"Parameters: {_millions(total)} in all; model {_millions(_count(state, MODEL_PREFIX))}"
        + "".join(
            f"; head `{name}` ({_short(head['class_path'])}) {_millions(_count(state, f'objectives.{name}.head.'))}"
            for name, head in heads.items()
        )
        + ".",
    ]
    if weights.run_config is not None:
        recipe = weights.run_dir / CONFIG_FILE if weights.run_dir else "given with the model"
        lines += ["", "## Training", "", f"Recipe: `{recipe}`.", ""]
        lines += list(_recipe_lines(weights.run_config))
        metrics, at = validation_metrics(weights.run_dir, weights.step) if weights.run_dir else ({}, None)
        if metrics:
            lines += ["", f"## Metrics (validation, `{RUN_METRICS}`, step {at})", "", "| metric | value |"]
            lines += ["|---|---|", *(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items()))]
    if removed or left_out:
        lines += ["", "## Not in this folder", ""]
        lines += [f"- `{item}` (switched off: the weights are in {WEIGHTS_FILE})" for item in removed]
        lines += [f"- `{key}` (left out)" for key in left_out]
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "import vlp.zoo",
        "",
        f'model = vlp.zoo.load("{out.name}")  # the path of this folder; eval mode',
        f'pretrained = vlp.zoo.load_pretrained("{out.name}")  # .model, .heads[name]',
        "```",
        "",
        f"A recipe starts from it with `init_from: {out.name}/{WEIGHTS_FILE}` (keys matched by name).",
        "",
    ]
    return "\n".join(lines)


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

    model_config, head_configs = _pretrained_config(path)
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
