"""The check before launching: every run's command line parsed by the parser ``fit`` uses (:class:`vlp.cli.VLPCLI`,
its recipe files followed and interpolations resolved, nothing built), and each run's id from the result.

A run's id is the first 12 hex digits of the sha256 of its resolved configuration without its seed, its
run folder and the sweep's metrics callback (which metrics are recorded does not change the run): ``seed_everything``, ``ckpt_path`` and ``weights_only`` (how a resumed run starts) are dropped, the run folder is
written ``<run>`` wherever it appears (the logger's ``save_dir``, ...), and the folder of the stage it starts
from is written as that run's id. Arguments at their default value are dropped too (the ``init_args`` of a
``class_path`` equal to its constructor's default, the trainer's equal to ``lightning.Trainer``'s), so a
release that adds an argument with a default keeps every id. Two runs with the same id train the same thing
on another seed; on the same seed, after the same chain, they are one run
(:class:`vlp.sweep.trials.Sharing`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import yaml
from lightning import LightningDataModule, LightningModule

from vlp.cli import VLPCLI
from vlp.errors import UserError
from vlp.sweep.trials import CALLBACK, Run, place_runs

NOT_IDENTITY = ("seed_everything", "ckpt_path", "weights_only")
"""Top-level keys that do not change what a run trains: its seed (a column of its own), and where and how
a resumed fit reads its checkpoint (``fit``'s ``ckpt_path`` and ``weights_only``, in a run's saved
``config.yaml``)."""


class ParseOnlyCLI(VLPCLI):
    """``fit``'s parsing of a command line, without seeding or building anything."""

    def instantiate_classes(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass


def resolved_config(argv: list[str]) -> dict[str, Any]:
    """The configuration ``python -m vlp fit <argv>`` would run, as plain data (keys set to None kept, as
    in the ``config.yaml`` the fit saves: None can differ from a default)."""
    cli = ParseOnlyCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        run=False,
        auto_configure_optimizers=False,
    )
    return json.loads(cli.parser.dump(cli.config, format="json", skip_validation=True, skip_none=False))


def check_runs(runs: list[Run], out: Path) -> list[Run]:
    """Parse every run's command line (``runs`` from :func:`~vlp.sweep.trials.expand`, in order); the runs
    with their ids, in their folders (a shared run in its owner's). A run is parsed with the stage it starts
    from in that stage's folder, so a run of its own is parsed exactly as it will run. The first run that
    does not parse stops the check with a :class:`~vlp.errors.UserError` naming its trial, stage and the
    parser's message (the key)."""
    ids: dict[str, str] = {}

    def parsed_id(run: Run) -> str:
        try:
            config = resolved_config(run.argv(out))
        except UserError as error:
            raise UserError(
                f"trial {run.trial}, stage {run.stage} ({run.run_dir}): {error}; no run was started"
            ) from None
        ids[run.run_dir] = run_id(config, run, out, ids)
        return ids[run.run_dir]

    return place_runs(runs, out, parsed_id)


def run_id(config: dict[str, Any], run: Run, out: Path, ids: dict[str, str]) -> str:
    """The id of ``run`` (in its folder ``run_dir``) from its parsed ``config``; ``ids``: by run folder,
    those of the runs before it (the one it starts from among them)."""
    after = (out / run.after, ids[run.after]) if run.after is not None else None
    return config_id(config, run.folder(out), after, run.command)


def config_id(
    config: dict[str, Any], folder: Path, after: tuple[Path, str] | None, command: str = "fit"
) -> str:
    """The id of a run in ``folder`` with the parsed ``config``; ``after``: the folder and id of the run
    it starts from. A ``predict`` run's id includes its command (a ``fit``'s does not, so the ids of
    sweeps without predict stages stay what they were)."""
    config = {key: value for key, value in config.items() if key not in NOT_IDENTITY}
    config = without_metrics_record(config)
    if command != "fit":
        config["command"] = command
    config = without_defaults(config)
    replacements = {str(folder.resolve()): "<run>"}
    if after is not None:
        replacements[str(after[0].resolve())] = f"<run {after[1]}>"
    canonical = json.dumps(_replace(config, replacements), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def without_metrics_record(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the sweep's :class:`~vlp.sweep.callback.MetricsRecord` among the trainer's
    callbacks: which metrics it records (the sweep file's ``metrics``, which may change) is not what the
    run trains."""
    trainer = config.get("trainer")
    if not isinstance(trainer, dict) or not isinstance(trainer.get("callbacks"), list):
        return config
    kept = [c for c in trainer["callbacks"] if not (isinstance(c, dict) and c.get("class_path") == CALLBACK)]
    return {**config, "trainer": {**trainer, "callbacks": kept}}


def ran_id(out: Path, record: dict[str, Any], ids: dict[str, str]) -> str | None:
    """The id of the configuration a run folder's fit saved (``<run_dir>/config.yaml``), computed as
    :func:`config_id` computes a planned run's; None without that file (a ``predict`` run saves none). ``record``: the run's entry of
    ``trials.json``; ``ids``: run ids by run folder (the run it starts from among them)."""
    saved = out / record["run_dir"] / "config.yaml"
    if not saved.is_file():
        return None
    after = record.get("after")
    if after is not None and after not in ids:
        return None
    start = None if after is None else (out / after, ids[after])
    saved_config = yaml.safe_load(saved.read_text()) or {}
    return config_id(saved_config, out / record["run_dir"], start, record.get("command", "fit"))


def _plain(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _constructor_defaults(target: Any) -> dict[str, str]:
    """The defaults of ``target``'s constructor as :func:`_plain` text, following a class's ``**kwargs``
    into its base classes as the parser does (a subclass's default wins); none without a signature."""
    if inspect.isclass(target):
        inits = [base.__dict__["__init__"] for base in target.__mro__ if "__init__" in base.__dict__]
    else:
        inits = [target]
    defaults: dict[str, str] = {}
    for init in inits:
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        for p in parameters:
            if p.default is not inspect.Parameter.empty:
                defaults.setdefault(p.name, _plain(p.default))
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return defaults


def _class_defaults(class_path: str) -> dict[str, str]:
    """:func:`_constructor_defaults` of ``class_path``; none when it does not import."""
    module, _, name = class_path.rpartition(".")
    try:
        return _constructor_defaults(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError):
        return {}


def _drop_defaults(arguments: dict[str, Any], defaults: dict[str, str]) -> dict[str, Any]:
    return {
        key: without_defaults(value, top=False)
        for key, value in arguments.items()
        if key not in defaults or _plain(value) != defaults[key]
    }


def without_defaults(value: Any, *, top: bool = True) -> Any:
    """``value`` (a parsed configuration) without the arguments that equal their default: in every
    ``{class_path, init_args}`` the constructor's defaults, and at the top level ``trainer``'s
    ``lightning.Trainer`` defaults. Values that are not plain data compare by their text."""
    if isinstance(value, list):
        return [without_defaults(item, top=False) for item in value]
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("class_path"), str) and isinstance(value.get("init_args"), dict):
        defaults = _class_defaults(value["class_path"])
        return {**value, "init_args": _drop_defaults(value["init_args"], defaults)}
    if top and isinstance(value.get("trainer"), dict):
        from lightning import Trainer

        trainer_defaults = _constructor_defaults(Trainer)
        return {
            key: _drop_defaults(item, trainer_defaults)
            if key == "trainer"
            else without_defaults(item, top=False)
            for key, item in value.items()
        }
    return {key: without_defaults(item, top=False) for key, item in value.items()}


def _replace(value: Any, replacements: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {key: _replace(item, replacements) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace(item, replacements) for item in value]
    if isinstance(value, str):
        for folder, name in replacements.items():
            if value == folder or value.startswith(folder + "/"):
                return name + value[len(folder) :]
    return value
