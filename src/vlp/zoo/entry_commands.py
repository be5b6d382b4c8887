"""``python -m vlp zoo list | info | fetch | verify | inspect | convert``: the registry from the terminal."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from vlp.errors import UserError
from vlp.zoo.registry import ENTRIES, Entry


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"python -m vlp zoo {command}", description=description, allow_abbrev=False
    )


def _hash_state(entry: Entry) -> str:
    """How the file is checked: the publisher's sha256, a hash prefix in the name, or the local pin."""
    from vlp.zoo.fetch import pinned_sha256

    if entry.sha256:
        return "published"
    pinned = pinned_sha256(entry)
    if entry.sha256_prefix:
        return "prefix, pinned" if pinned else f"prefix {entry.sha256_prefix}"
    if entry.hub is not None:
        return "Hub LFS, pinned" if pinned else "Hub LFS"
    return "pinned" if pinned else "pinned on first fetch"


def _source(entry: Entry) -> str:
    if entry.hub is not None:
        return f"hf:{entry.hub.repo_id}"
    return entry.url.split("/")[2] if entry.url else "-"


def list_entries(args: Sequence[str]) -> list[Entry]:
    """Print the registry as a table (name, parameters, resolution, source, sha256 state, figure)."""
    parser = _parser("list", "The published checkpoints vlp loads by name.")
    parser.add_argument("--family", default=None, help="only this family (vilt, vqgan, detr, timm)")
    cfg = parser.parse_args(list(args))
    entries = [e for e in ENTRIES.values() if cfg.family in (None, e.family)]
    if not entries:
        families = sorted({e.family for e in ENTRIES.values()})
        raise UserError(f"zoo list --family {cfg.family}: no such family; the families are {families}")
    rows = [
        (e.name, e.params, str(e.preprocessing.resolution), _source(e), _hash_state(e), e.figure)
        for e in entries
    ]
    header = ("name", "params", "res", "source", "sha256", "figure")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[5])
    return entries


def _entry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="family:tag (python -m vlp zoo list)")


def _entry(name: str) -> Entry:
    from vlp.zoo.pipeline import entry_of

    return entry_of(name)


def info(args: Sequence[str]) -> Entry:
    """Print everything the registry knows about one entry, and where its file is locally."""
    parser = _parser("info", "One entry: sources, checks, conversion, preprocessing, licence, figure.")
    _entry_arg(parser)
    entry = _entry(parser.parse_args(list(args)).name)
    from vlp.zoo.fetch import local_file, pinned_sha256

    pre = entry.preprocessing
    lines = [
        ("name", entry.name),
        ("file", entry.filename),
        ("sources", ", ".join(entry.source_names()) or "-"),
        ("sha256", entry.sha256 or pinned_sha256(entry) or f"not known yet ({_hash_state(entry)})"),
        ("container", entry.container_key or "the file is the state dict"),
        ("converter", entry.converter),
        ("drops", ", ".join(entry.expected_dropped) or "nothing"),
        ("image", f"{pre.resolution} px, mean {list(pre.mean)}, std {list(pre.std)}"),
        ("tokenizer", pre.tokenizer or "-"),
        ("params", entry.params),
        ("licence", entry.license),
        ("figure", entry.figure),
        ("local", str(local_file(entry) or "not fetched")),
    ]
    for key, value in lines:
        print(f"{key:<10s} {value}")
    return entry


def fetch_entry(args: Sequence[str]) -> Path:
    """Fetch one entry's file (verified) and print its path and sha256."""
    from vlp.zoo.fetch import fetch, sha256_of

    parser = _parser("fetch", "Download (or find locally) an entry's file and verify it.")
    _entry_arg(parser)
    parser.add_argument("--offline", action="store_true", help="never touch the network (also VLP_OFFLINE=1)")
    cfg = parser.parse_args(list(args))
    path = fetch(_entry(cfg.name), offline=True if cfg.offline else None)
    print(f"{path}  sha256 {sha256_of(path)}")
    return path


def verify_entry(args: Sequence[str]) -> str:
    """Check a local file (or the entry's fetched copy) against the entry's sha256."""
    from vlp.zoo.fetch import local_file, verify

    parser = _parser("verify", "Check a file against an entry's sha256 (published or pinned).")
    _entry_arg(parser)
    parser.add_argument("file", nargs="?", type=Path, default=None, help="default: the mirror or cache copy")
    cfg = parser.parse_args(list(args))
    entry = _entry(cfg.name)
    path = cfg.file or local_file(entry)
    if path is None:
        raise UserError(
            f"zoo verify {entry.name}: no local copy; `python -m vlp zoo fetch {entry.name}` first"
        )
    digest = verify(entry, path)
    print(f"{path}: ok, sha256 {digest}")
    return digest


def _describe(value: Any, depth: int = 0) -> list[str]:
    """The structure of a loaded checkpoint without its tensors: mappings by key, tensors counted."""
    if isinstance(value, Tensor):
        return [f"tensor {tuple(value.shape)} {value.dtype}"]
    if isinstance(value, Mapping):
        tensors = [v for v in value.values() if isinstance(v, Tensor)]
        if tensors and len(tensors) == len(value):
            params = sum(t.numel() for t in tensors)
            return [f"state dict: {len(tensors)} tensors, {params:,} values"]
        lines = []
        for key, item in value.items():
            inner = _describe(item, depth + 1) if depth < 2 else [type(item).__name__]
            lines.append(f"{'  ' * depth}{key}: {inner[0]}")
            lines += [f"{'  ' * depth}  {line}" for line in inner[1:]]
        return lines or ["empty mapping"]
    return [type(value).__name__]


def _tensors(value: Any, prefix: str = "") -> list[tuple[str, Tensor]]:
    """Every tensor in a loaded checkpoint with its path (``model.a``), in the file's order."""
    if isinstance(value, Tensor):
        return [(prefix.rstrip("."), value)]
    if isinstance(value, Mapping):
        return [pair for key, item in value.items() for pair in _tensors(item, f"{prefix}{key}.")]
    return []


def inspect_file(args: Sequence[str]) -> list[str]:
    """Print a checkpoint's structure (read safely), or its keys and shapes with --keys."""
    from vlp.checkpoints import torch_load

    parser = _parser("inspect", "A checkpoint's structure, read safely (nothing in it is executed).")
    parser.add_argument("file", type=Path)
    parser.add_argument("--keys", action="store_true", help="list every tensor's key, shape and dtype")
    cfg = parser.parse_args(list(args))
    if not cfg.file.is_file():
        raise UserError(f"zoo inspect: {cfg.file}: no such file")
    if cfg.file.suffix == ".safetensors":
        from safetensors.torch import load_file

        loaded: Any = load_file(str(cfg.file))
    else:
        loaded = torch_load(cfg.file)
    lines = _describe(loaded)
    if cfg.keys:
        lines += [f"{key}  {tuple(t.shape)}  {t.dtype}" for key, t in _tensors(loaded)]
    print("\n".join(lines))
    return lines


def convert_entry_command(args: Sequence[str]) -> Path:
    """Convert an entry (fetched, or a local file given with --file) to vlp's keys in a safetensors file."""
    from vlp.zoo.files import write_state_dict
    from vlp.zoo.pipeline import convert_entry, convert_file

    parser = _parser(
        "convert", "An entry's weights in vlp's task layout (model.*, objectives.<name>.head.*)."
    )
    _entry_arg(parser)
    parser.add_argument("out", type=Path, help="the .safetensors file to write (never overwritten)")
    parser.add_argument("--file", type=Path, default=None, help="convert this local copy of the entry's file")
    parser.add_argument("--offline", action="store_true", help="never touch the network (also VLP_OFFLINE=1)")
    cfg = parser.parse_args(list(args))
    if cfg.out.suffix != ".safetensors":
        raise UserError(f"zoo convert: {cfg.out}: write a .safetensors file")
    if cfg.out.exists():
        raise UserError(f"zoo convert: {cfg.out} exists; name a new file (vlp never overwrites your files)")
    entry = _entry(cfg.name)
    if cfg.file is not None:
        from vlp.zoo.fetch import verify

        verify(entry, cfg.file)
        converted = convert_file(entry, cfg.file)
    else:
        converted = convert_entry(entry, offline=True if cfg.offline else None)
    print(converted.report.summary())
    out = write_state_dict(converted.state, cfg.out)
    print(f"{out}: {len(converted.state)} tensors; use it as init_from, or init_from: zoo:{entry.name}")
    return out


def export_run(args: Sequence[str]) -> Path:
    """Export a run (folder or checkpoint) as a folder ``vlp.zoo.load`` rebuilds without the recipe."""
    from vlp.zoo.pretrained import save_pretrained

    parser = _parser(
        "export", "A run as model.safetensors + config.yaml + a model card, loadable by vlp.zoo.load."
    )
    parser.add_argument("source", type=Path, help="a run folder (its last checkpoint) or a checkpoint file")
    parser.add_argument("out", type=Path, help="a new or empty folder (never written into otherwise)")
    cfg = parser.parse_args(list(args))
    out = save_pretrained(cfg.source, cfg.out)
    print(f"{out}: load it with vlp.zoo.load({str(out)!r}), or use {out}/model.safetensors as init_from")
    return out
