"""Data-vs-model checks: a recipe's datamodule against its model, before any work starts.

A recipe builds the model and the datamodule separately, so values that must agree live in two places:

- the data transform's ``image_size`` must be a multiple of its own ``patch_size`` (images are resized to
  whole patches) and of the ``patch_size`` of every patch embedder of the model;
- the data transform's ``patch_size`` (the grid images are resized and padded to) must be the patch
  embedders' ``patch_size`` (the grid the model cuts them into);
- the data collator's ``max_text_len`` must fit every text position table of the model
  (:class:`~vlp.models.embedders.text.TextEmbedder`'s ``max_len``, :class:`~vlp.models.ernie_vilg.model.ERNIEViLG`'s
  ``max_text_len``), or the first long caption fails mid-run.

:func:`check_data_fits_model` walks the model's modules (``model.named_modules()``) and reads the datamodule's
parts (``datamodule.transform``, ``datamodule.collator``: :class:`~vlp.datamodules.shards.ShardDataModule`), so
it applies to any assembly built from these parts. ``python -m vlp`` runs it right after the
recipe's classes are built (:class:`vlp.cli.VLPCLI`). Parts the checks do not know are skipped: a CNN grid or
VQGAN embedder has no ``patch_size`` to compare.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from vlp.errors import UserError
from vlp.models.embedders.base import VisualEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.ernie_vilg.model import ERNIEViLG


def check_data_fits_model(model: nn.Module, datamodule: object | None) -> None:
    """Raise a :class:`~vlp.errors.UserError` naming every value of ``datamodule`` that ``model`` cannot
    take, and both sides of each; return quietly when all fit (or there is no datamodule)."""
    if datamodule is None:
        return
    problems = [*image_problems(model, datamodule), *text_problems(model, datamodule)]
    if problems:
        raise UserError("the data does not fit the model: " + "; ".join(problems))


IMAGE_SIZE = "data.init_args.transform.init_args.image_size"
PATCH_SIZE = "data.init_args.transform.init_args.patch_size"
MAX_TEXT_LEN = "data.init_args.collator.init_args.max_text_len"


def image_problems(model: nn.Module, datamodule: object) -> list[str]:
    """``image_size`` / ``patch_size`` of the data transform against its own and the patch embedders' patch size."""
    transform = getattr(datamodule, "transform", None)
    image_size = _int_attribute(transform, "image_size")
    data_patch = _int_attribute(transform, "patch_size")
    problems = []
    if image_size is not None and data_patch is not None and data_patch > 0 and image_size % data_patch:
        problems.append(
            f"{IMAGE_SIZE}={image_size} is not a multiple of {PATCH_SIZE}={data_patch}"
            f" ({_multiples(image_size, data_patch)})"
        )
    for name, embedder in _patch_embedders(model):
        patch = embedder.patch_size
        where = f"{_describe(name, embedder)} has patch_size={patch}"
        if data_patch is not None and data_patch != patch:
            problems.append(
                f"{PATCH_SIZE}={data_patch} differs from the model's: {where}; set both to the same value "
                "(images are resized and padded to the data's patches, the model cuts its own)"
            )
        if image_size is not None and image_size % patch and patch != data_patch:
            problems.append(
                f"{IMAGE_SIZE}={image_size} is not a multiple of the model's patch size: {where} "
                f"({_multiples(image_size, patch)})"
            )
    return problems


def text_problems(model: nn.Module, datamodule: object) -> list[str]:
    """``max_text_len`` of the data collator against every text position table of the model."""
    max_text_len = _int_attribute(getattr(datamodule, "collator", None), "max_text_len")
    if max_text_len is None:
        return []
    return [
        f"{MAX_TEXT_LEN}={max_text_len} is longer than the model's text positions: "
        f"{_describe(name, module)} has {attribute}={positions}; set {MAX_TEXT_LEN} to at most "
        f"{positions} or {attribute} to at least {max_text_len}"
        for name, module, attribute, positions in _text_tables(model)
        if max_text_len > positions
    ]


def _patch_embedders(model: nn.Module) -> Iterator[tuple[str, VisualEmbedder]]:
    for name, module in model.named_modules():
        if isinstance(module, VisualEmbedder) and isinstance(getattr(module, "patch_size", None), int):
            yield name, module


def _text_tables(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, int]]:
    """``(module name, module, attribute, positions)`` of every learned text position table."""
    for name, module in model.named_modules():
        if isinstance(module, TextEmbedder):
            yield name, module, "max_len", module.max_len
        elif isinstance(module, ERNIEViLG):
            yield name, module, "max_text_len", module.max_text_len


def _int_attribute(obj: object, name: str) -> int | None:
    value = getattr(obj, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _describe(name: str, module: nn.Module) -> str:
    return f"{name or 'the model'} ({type(module).__name__})"


def _multiples(size: int, patch: int) -> str:
    below = size // patch * patch
    options = [f"{below}"] if below else []
    return "e.g. " + " or ".join([*options, f"{below + patch}"])
