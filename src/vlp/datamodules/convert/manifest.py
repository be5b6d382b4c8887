"""What a converted dataset folder records: ``manifest.json`` and the conversion's stamp.

``manifest.json`` (written when a conversion completes) says what is in the folder and what was left out::

    {"converter": "coco", "vlp_version": "0.1.0",
     "options": {"split_source": "karpathy", ...}, "max_side": null, "samples_per_shard": 1000,
     "annotation_files": {"karpathy/dataset_coco.json": "<sha256>", ...},
     "splits": {"train": {"samples": 113287, "shards": 114, "dropped": 0,
                          "extensions_fixed": {"png->jpg": 0}, "reencoded": {}}, ...},
     "dropped": [{"split": "val", "key": "000000000042", "reason": "corrupt image ..."}, ...],
     "dropped_annotations": [{"key": "1234", "reason": "iscrowd annotation of image 42"}, ...],
     "vocab": "vocab.json"}

``.vlp-convert.json`` (written first) holds the settings of the conversion that owns the folder: a run
with the same settings resumes it, a run with others is refused, setting by setting (:func:`differences`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_FILE", "STAMP_FILE", "Manifest", "SplitManifest", "differences", "write_json"]

MANIFEST_FILE = "manifest.json"
STAMP_FILE = ".vlp-convert.json"
STAMP_FORMAT = 1
SETTINGS = ("converter", "options", "max_side", "samples_per_shard", "annotation_files")
"""The stamp's settings; a conversion is resumed only when all of them are equal."""
COMMAND_OPTIONS = {"max_side": "--max-side", "samples_per_shard": "--samples-per-shard"}


@dataclass
class SplitManifest:
    """One split: samples and shards written, samples dropped, extensions corrected, formats re-encoded."""

    samples: int = 0
    shards: int = 0
    dropped: int = 0
    extensions_fixed: dict[str, int] = field(default_factory=dict)  # "png->jpg": count
    reencoded: dict[str, int] = field(default_factory=dict)  # "gif->png": count


@dataclass
class Manifest:
    """The content of ``manifest.json`` (see the module docstring)."""

    converter: str
    vlp_version: str
    options: dict[str, Any]
    max_side: int | None
    samples_per_shard: int
    annotation_files: dict[str, str]
    splits: dict[str, SplitManifest]
    dropped: list[dict[str, str]] = field(default_factory=list)
    dropped_annotations: list[dict[str, str]] = field(default_factory=list)
    vocab: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        splits = {name: SplitManifest(**split) for name, split in data["splits"].items()}
        return cls(**{**data, "splits": splits})

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest of a converted folder."""
        return cls.from_json(json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8")))

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / MANIFEST_FILE, self.to_json())


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as json atomically (a temporary file renamed into place)."""
    partial = path.with_name(f"{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def differences(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The settings (:data:`SETTINGS`) of a folder's stamp ``found`` that differ from ``wanted``, each as
    ``name: X there, Y here``; options and annotation files one by one."""
    lines = []
    for setting in SETTINGS:
        old, new = found.get(setting), wanted.get(setting)
        if setting == "options" and isinstance(old, dict) and isinstance(new, dict):
            for name in sorted({*old, *new}):
                if old.get(name) != new.get(name):
                    lines.append(
                        f"option {name}: {_shown(old.get(name))} there, {_shown(new.get(name))} here"
                    )
        elif setting == "annotation_files" and isinstance(old, dict) and isinstance(new, dict):
            for name in sorted({*old, *new}):
                if old.get(name) != new.get(name):
                    lines.append(
                        f"annotation file {name} differs (sha256 {_short(old.get(name))} there, "
                        f"{_short(new.get(name))} here)"
                    )
        elif old != new:
            shown = f"{setting} ({COMMAND_OPTIONS[setting]})" if setting in COMMAND_OPTIONS else setting
            lines.append(f"{shown}: {_shown(old)} there, {_shown(new)} here")
    return lines


def _shown(value: Any) -> str:
    return json.dumps(value) if value is not None else "not set"


def _short(digest: Any) -> str:
    return digest[:12] if isinstance(digest, str) else "none"
