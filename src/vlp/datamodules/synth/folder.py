"""Folder ownership: the generator's stamp (``.vlp-shapes.json``), what a folder holds, and whether the
generator may write into it.

The generator only writes into a new or empty folder or one carrying its stamp; anything else is reported
(:class:`ShapesFolderError`) and never written to or deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from vlp.datamodules.synth.scenes import IMAGE_SPLITS, PAIR_SPLITS, ShapesConfig
from vlp.errors import UserError
from vlp.processes import pid_alive

__all__ = [
    "FORMAT_VERSION",
    "GENERATOR",
    "STAMP",
    "FolderState",
    "ShapesFolderError",
    "shapes_folder_state",
    "shapes_ready",
]


STAMP = ".vlp-shapes.json"
"""The generator's stamp file in a folder it wrote: the only kind of folder it replaces or completes."""
FORMAT_VERSION = 1
"""Version of what the generator writes for a config; a change of output makes old folders differ."""
GENERATOR = "vlp.datamodules.synth.shapes"
"""Names this generator in its stamps; a stamp naming anything else marks a foreign folder."""

log = logging.getLogger(__name__)


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class ShapesFolderError(UserError):
    """A folder the shapes generator may not write into (someone else's) or reuse (other settings)."""


@dataclass(frozen=True)
class FolderState:
    """What :func:`shapes_folder_state` finds at a path."""

    kind: Literal["absent", "empty", "complete", "incomplete", "foreign", "not_a_folder"]
    config: dict[str, Any] | None = None  # the generator settings recorded in the folder
    format_version: int | None = None

    def differences(self, config: ShapesConfig) -> list[tuple[str, Any, Any]]:
        """``(setting, value in the folder, value asked)`` for every setting that differs."""
        recorded = {**(self.config or {}), "format_version": self.format_version}
        asked = {**asdict(config), "format_version": FORMAT_VERSION}
        return [
            (name, recorded.get(name), asked.get(name))
            for name in [*asked, *sorted(set(recorded) - set(asked))]
            if recorded.get(name) != asked.get(name)
        ]


def _read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp's content when it is one of this generator's, else None."""
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("generator") != GENERATOR:
        return None
    if not isinstance(stamp.get("config"), dict) or not isinstance(stamp.get("format_version"), int):
        return None
    return stamp


def _unstamped_config(root: Path) -> dict[str, Any] | None:
    """The config of a complete folder written before the generator stamped its folders: a ``vocab.json``
    and a ``stats.json`` with ``splits`` and a ``config`` holding exactly the generator's settings."""
    try:
        stats = json.loads((root / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (root / "vocab.json").is_file() or not isinstance(stats, dict) or "splits" not in stats:
        return None
    config = stats.get("config")
    names = {f.name for f in fields(ShapesConfig)}
    return config if isinstance(config, dict) and set(config) == names else None


def shapes_folder_state(out_dir: str | Path) -> FolderState:
    """Whether ``out_dir`` is absent, an empty folder, a shapes folder (complete or interrupted, with the
    settings it was written with), or something else (``foreign``: never written to or deleted)."""
    root = Path(out_dir)
    if not root.exists():
        return FolderState("absent")
    if not root.is_dir():
        return FolderState("not_a_folder")
    if (root / STAMP).exists():
        stamp = _read_stamp(root / STAMP)
        if stamp is None:
            return FolderState("foreign")
        kind = "complete" if stamp.get("complete") is True else "incomplete"
        return FolderState(kind, stamp["config"], stamp["format_version"])
    if not any(root.iterdir()):
        return FolderState("empty")
    unstamped = _unstamped_config(root)
    if unstamped is not None:
        return FolderState("complete", unstamped, FORMAT_VERSION)
    return FolderState("foreign")


def shapes_ready(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a completely written shapes dataset (any settings)."""
    return shapes_folder_state(out_dir).kind == "complete"


def _write_stamp(root: Path, config: ShapesConfig, complete: bool) -> None:
    """Write the stamp atomically; an incomplete one also names the writing process."""
    stamp: dict[str, Any] = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "complete": complete,
        "config": asdict(config),
    }
    if not complete:
        stamp.update(host=socket.gethostname(), pid=os.getpid())
    partial = root / f"{STAMP}.partial"
    _write_json(partial, stamp)
    partial.replace(root / STAMP)


def _staging_prefix(target: Path) -> str:
    return f"{target.name}.vlp-tmp-"


def _remove_dead_staging(target: Path) -> None:
    """Delete staging folders of interrupted generations into ``target``: siblings named
    ``<target>.vlp-tmp-<pid>`` whose stamp says incomplete and names a process of this host that is gone."""
    if not target.parent.is_dir():
        return
    host = socket.gethostname()
    for folder in target.parent.glob(f"{_staging_prefix(target)}*"):
        stamp = _read_stamp(folder / STAMP)
        if stamp is None or stamp.get("complete") is not False or stamp.get("host") != host:
            continue
        pid = stamp.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid):
            log.info("vlp: removing %s, left by an interrupted shapes generation", folder)
            shutil.rmtree(folder)

    return True


def _generated_entries(root: Path) -> list[Path]:
    names = [*IMAGE_SPLITS, *PAIR_SPLITS, "vocab.json", "stats.json", f"{STAMP}.partial", STAMP]
    return [root / name for name in names if (root / name).exists()]


def _clear_incomplete(root: Path) -> None:
    """Remove what an interrupted generation wrote into ``root`` (its stamp says so); anything else in
    the folder is kept and stops the generation."""
    for path in _generated_entries(root):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    others = sorted(p.name for p in root.iterdir())
    if others:
        raise ShapesFolderError(
            f"{root} held an interrupted shapes generation and also {others[:5]}, which the generator did "
            "not write: move them out of the folder, then run again"
        )


def _folder_error(
    root: Path, state: FolderState, config: ShapesConfig, root_setting: str, synth_setting: str | None
) -> ShapesFolderError:
    """The error for a folder the generator may not use, naming the settings to change."""
    as_is = (
        f"set {synth_setting}: null (--{synth_setting}=null) to train on the shards in it as they are"
        if synth_setting
        else None
    )
    if state.kind == "not_a_folder":
        return ShapesFolderError(f"{root} exists and is not a folder: set {root_setting} to a folder")
    if state.kind == "foreign":
        options = [as_is, f"set {root_setting} to a new folder to generate the shapes dataset there"]
        return ShapesFolderError(
            f"{root} is not empty and has no {STAMP} stamp: the shapes generator did not write it, and vlp "
            "never writes into such a folder or deletes it.\n" + _options(options)
        )
    changes = "".join(
        f"\n  {name}: {old!r} in the folder, {new!r} asked" for name, old, new in state.differences(config)
    )
    options = [
        f"set {root_setting} to another folder to generate these settings there",
        f"delete {root} yourself to regenerate it",
        as_is,
    ]
    return ShapesFolderError(
        f"{root} holds the shapes dataset generated with other settings:{changes}\n"
        "vlp neither reuses it nor deletes it. " + _options(options)
    )


def _options(options: list[str | None]) -> str:
    """``options`` as one sentence: "A, or b."."""
    text = ", or ".join(o for o in options if o)
    return text[:1].upper() + text[1:] + "."
