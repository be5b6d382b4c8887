"""The check before launching: every run's command line parsed by the parser ``fit`` uses (:class:`vlp.cli.VLPCLI`,
its recipe files followed and interpolations resolved, nothing built), and each run's id from the result.

A run's id is the first 12 hex digits of the sha256 of its resolved configuration without its seed and its
run folder: ``seed_everything`` is dropped, the run folder is written ``<run>`` wherever it appears (the
logger's ``save_dir``, ...), and the folder of the stage it starts from is written as that run's id. Two runs
with the same id train the same thing on another seed; on the same seed, after the same chain, they are one
run (:class:`vlp.sweep.trials.Sharing`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lightning import LightningDataModule, LightningModule

from vlp.cli import VLPCLI
from vlp.errors import UserError
from vlp.sweep.trials import Run, place_runs


class ParseOnlyCLI(VLPCLI):
    """``fit``'s parsing of a command line, without seeding or building anything."""

    def instantiate_classes(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass


def resolved_config(argv: list[str]) -> dict[str, Any]:
    """The configuration ``python -m vlp fit <argv>`` would run, as plain data."""
    cli = ParseOnlyCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        run=False,
        auto_configure_optimizers=False,
    )
    return json.loads(cli.parser.dump(cli.config, format="json", skip_validation=True))


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
    config = {key: value for key, value in config.items() if key != "seed_everything"}
    replacements = {str(run.folder(out).resolve()): "<run>"}
    if run.after is not None:
        replacements[str((out / run.after).resolve())] = f"<run {ids[run.after]}>"
    canonical = json.dumps(_replace(config, replacements), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


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
