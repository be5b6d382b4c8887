"""``python -m vlp data convert <dataset> --root RAW --out OUT [options]``: a raw download into shards.

Every dataset is registered here by name with the import path of its
:class:`~vlp.datamodules.convert.base.DatasetConverter`, imported only when it is asked for. A dataset's
options are its converter's keyword arguments, as ``--dashed-names`` with the types, defaults and help of
the class (``python -m vlp data convert coco --help``); the writer's options (``--workers``,
``--max-side``, ``--samples-per-shard``) are the same for all.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import typing
from argparse import ArgumentError, RawDescriptionHelpFormatter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import DefaultHelpFormatter

from vlp.datamodules.convert.base import DatasetConverter
from vlp.errors import UserError
from vlp.parse_errors import describe_parse_error, option_strings

__all__ = ["DATASETS", "converter_class", "main"]

PROG = "python -m vlp data convert"

DATASETS: dict[str, tuple[str, str]] = {
    "coco": (
        "vlp.datamodules.convert.coco:COCOConverter",
        "COCO captions, Karpathy's split or the official one, optionally with the instance boxes",
    ),
    "flickr30k": (
        "vlp.datamodules.convert.flickr30k:Flickr30kConverter",
        "Flickr30k captions, Karpathy's split",
    ),
    "web": (
        "vlp.datamodules.convert.web:WebConverter",
        "web image-text pairs: img2dataset's output, or a JSON / TSV list of [image path, caption]",
    ),
    "vqav2": (
        "vlp.datamodules.convert.vqav2:VQAv2Converter",
        "VQAv2 questions and answers on the COCO images",
    ),
    "nlvr2": ("vlp.datamodules.convert.nlvr2:NLVR2Converter", "NLVR2 statements about image pairs"),
    "visual-genome": (
        "vlp.datamodules.convert.visual_genome:VisualGenomeConverter",
        "Visual Genome region captions, objects with attributes, QA",
    ),
}
"""Dataset name -> (``module:Class`` of its converter, one line about it)."""

WRITER_OPTIONS = ("root", "out", "workers", "max_side", "samples_per_shard", "progress")


def main(args: Sequence[str]) -> None:
    """``data convert <dataset> [options]``; help for no dataset or ``--help``."""
    from vlp.tool_commands import run_tool, tool_help

    help_text = tool_help(
        f"{PROG} <dataset> --root RAW --out OUT [--workers N] [--max-side S] [--samples-per-shard N] [options]",
        "A published dataset's raw download into webdataset shards, with a manifest.json of what was "
        "written and what was left out (and why).",
        "datasets",
        {name: summary for name, (_, summary) in DATASETS.items()},
        f"`{PROG} <dataset> --help` lists a dataset's options and the raw layout it reads.",
    )
    runners = {name: functools.partial(convert, name) for name in DATASETS}
    run_tool(list(args), help_text, "dataset", runners)


def converter_class(name: str) -> type[DatasetConverter]:
    """The converter class of a registered dataset; a :class:`~vlp.errors.UserError` saying why not when
    its module or one of its packages cannot be imported."""
    target, _ = DATASETS[name]
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise UserError(
                f"dataset {name!r}: its converter ({module_name}) is not part of this vlp installation"
            ) from None
        raise UserError(
            f"dataset {name!r}: its converter ({module_name}) needs the package {error.name!r}, which is not "
            f"installed"
        ) from None
    found = getattr(module, class_name, None)
    if not (isinstance(found, type) and issubclass(found, DatasetConverter)):
        raise UserError(f"dataset {name!r}: {module_name} has no converter class {class_name}")
    return found


def converter_parameters(cls: type[DatasetConverter]) -> list[tuple[str, Any, Any]]:
    """``(name, type, default)`` of each option of the converter (its ``__init__``'s arguments after
    ``root``); the default is ``inspect.Parameter.empty`` for a required one."""
    hints = typing.get_type_hints(cls.__init__)
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, root
    found = []
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.name in WRITER_OPTIONS:
            raise TypeError(f"{cls.__qualname__}: option {parameter.name!r} is one of the writer's")
        found.append((parameter.name, hints.get(parameter.name, str), parameter.default))
    return found


def option_help(cls: type[DatasetConverter]) -> dict[str, str]:
    """Option name -> its description in the class's ``Args:`` docstring section."""
    from docstring_parser import parse

    return {
        param.arg_name: " ".join((param.description or "").split())
        for param in parse(cls.__doc__ or "").params
    }


def default_layout(cls: type[DatasetConverter]) -> str:
    """The raw layout the converter reads with its default options (empty when it needs options)."""
    try:
        return cls(Path("RAW")).layout()
    except (TypeError, ValueError):
        return ""


class LayoutHelpFormatter(DefaultHelpFormatter, RawDescriptionHelpFormatter):
    """jsonargparse's help, with the description's lines (the raw layout) kept as they are."""


def converter_parser(name: str, cls: type[DatasetConverter]) -> Any:
    """The command-line parser of ``data convert <name>``."""
    from jsonargparse import ArgumentParser

    layout = default_layout(cls)
    description = (cls.__doc__ or "").strip().split("\n\n")[0]
    parser = ArgumentParser(
        prog=f"{PROG} {name}",
        description=" ".join(description.split()) + (f"\n\nexpected raw layout:\n{layout}" if layout else ""),
        formatter_class=LayoutHelpFormatter,
        allow_abbrev=False,
        exit_on_error=False,
    )
    parser.add_argument("--root", type=str, required=True, help="the raw download folder")
    parser.add_argument(
        "--out", type=str, required=True, help="the output folder: new, empty, or this conversion's"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes reading and checking images",
    )
    parser.add_argument(
        "--max-side",
        type=int | None,
        default=None,
        help="shrink images whose longer side is larger to this (same format, boxes scaled); default: keep bytes",
    )
    parser.add_argument("--samples-per-shard", type=int, default=1000, help="records per shard")
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar per split")
    helps = option_help(cls)
    for option, hint, default in converter_parameters(cls):
        flag = "--" + option.replace("_", "-")
        if default is inspect.Parameter.empty:
            parser.add_argument(flag, type=hint, required=True, help=helps.get(option, ""))
        else:
            parser.add_argument(flag, type=hint, default=default, help=helps.get(option, ""))
    return parser


def convert(name: str, args: list[str]) -> None:
    """Parse ``args``, convert, print what was written."""
    from vlp.datamodules.convert.writer import write_shards

    cls = converter_class(name)
    parser = converter_parser(name, cls)
    try:
        cfg = parser.parse_args(args)
    except ArgumentError as error:
        help_command = f"{PROG} {name} --help"
        raise UserError(describe_parse_error(error, args, option_strings(parser), help_command)) from error
    options = {option: cfg[option] for option, _, _ in converter_parameters(cls)}
    converter = cls(Path(cfg.root), **options)
    manifest = write_shards(
        converter,
        Path(cfg.out),
        workers=cfg.workers,
        max_side=cfg.max_side,
        samples_per_shard=cfg.samples_per_shard,
        progress=cfg.progress,
    )
    out = Path(cfg.out).expanduser()
    print(f"{name} -> {out}")
    for split, info in manifest.splits.items():
        print(f"  {split:<12s} {info.samples:>8d} samples in {info.shards} shards, {info.dropped} dropped")
    if manifest.dropped or manifest.dropped_annotations:
        print(
            f"  {len(manifest.dropped)} samples and {len(manifest.dropped_annotations)} annotations left out: "
            f"{out / 'manifest.json'} lists each with the reason"
        )
