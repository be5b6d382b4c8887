"""The model card (``README.md``) of a pretrained folder: what the model is, its sizes and parameter
counts, and, when it comes from a run, the run's recipe and last validation metrics."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from vlp.zoo.task_weights import CONFIG_FILE, MODEL_PREFIX, WEIGHTS_FILE, TaskWeights, is_class_config

RUN_METRICS = "metrics.csv"


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _scalars(init_args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in init_args.items() if isinstance(v, (bool, int, float, str)))


def _part_lines(config: Mapping[str, Any]) -> Iterator[str]:
    """One line per part of a model config: its class and scalar arguments; then the model's own scalars."""
    init = config.get("init_args") or {}
    for name, value in init.items():
        if is_class_config(value):
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
