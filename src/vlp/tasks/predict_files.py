"""What ``python -m vlp predict`` shares across tasks: where the files go, gathering, writing.

Every task writes its predictions under ``predict_dir`` (a task argument; ``None``: the trainer's
``default_root_dir`` + ``/predictions``). Two kinds of file:

* **record files** (JSON, JSONL): each process keeps the rows of the batches it read; at the end of the
  predict epoch the rows of every process are gathered and the first process writes one file, the rows
  sorted by their sample key, so the file is the same whatever the number of processes;
* **image files** (PNG grids): each process writes its own as it goes, named with its rank and the batch
  index (gathering pixels would hold every image in one process's memory).

A file is never written over: ``predict`` stops before any work when ``predict_dir`` already holds a
file the task would write, naming it, and files are created in exclusive mode.

Under DDP Lightning runs ``predict`` unwrapped, so each process may read a different number of batches
(the shards are split by rank); the one collective is the gathering at the end. Under FSDP2 every
forward pass is a collective: the processes must then read the same number of batches
(``limit_predict_batches``), except for :class:`~vlp.tasks.retrieval.RetrievalTask`, which scores at the
end in equal shares.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from vlp.batch import Batch

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]


def predict_folder(predict_dir: str | None, default_root_dir: str | None) -> Path:
    """``predict_dir``, or ``<default_root_dir>/predictions`` when it is None."""
    if predict_dir is not None:
        return Path(predict_dir).expanduser()
    return Path(default_root_dir if default_root_dir is not None else ".") / "predictions"


def refuse_existing(folder: Path, patterns: Sequence[str]) -> None:
    """Stop, naming them, when ``folder`` holds files matching ``patterns`` (predictions of an earlier run)."""
    found = sorted({p.name for pattern in patterns for p in folder.glob(pattern)})
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise FileExistsError(
            f"predict_dir {folder} already holds predictions ({shown}); vlp does not write over them: "
            "set --model.init_args.predict_dir to a new folder, or move those files away"
        )


def gather_rows(rows: list[T]) -> list[T] | None:
    """Every process's ``rows`` (in rank order) on the first process; ``None`` on the others."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(rows)
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, rows)
    if dist.get_rank() != 0:
        return None
    return [row for part in everyone for row in part]


def write_json(path: Path, value: Any, indent: int | None = None) -> Path:
    """``value`` as JSON in a new file ``path`` (an existing file is an error, never replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8") as handle:
        json.dump(value, handle, indent=indent)
        handle.write("\n")
    return path


def write_jsonl(path: Path, rows: Iterable[Row]) -> Path:
    """One JSON object per line in a new file ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


GRID_PADDING = 2
"""Pixels around and between the images of a :func:`write_png` grid."""


def write_png(path: Path, images: Tensor, nrow: int) -> Path:
    """Images ``[N, 3, H, W]`` in [0, 1] as one PNG grid of ``nrow`` images per row, in a new file."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as handle:
        save_image(images.detach().float().cpu(), handle, nrow=nrow, padding=GRID_PADDING, format="png")
    return path


def read_png_row(path: Path, row: int, count: int, size: tuple[int, int]) -> Tensor:
    """The first ``count`` images of grid row ``row`` of a :func:`write_png` file of ``size = (H, W)``
    images, as ``[count, 3, H, W]`` in [0, 1] (8-bit, as written)."""
    from PIL import Image

    height, width = size
    with Image.open(path) as image:
        grid = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    top = GRID_PADDING + row * (height + GRID_PADDING)
    lefts = [GRID_PADDING + column * (width + GRID_PADDING) for column in range(count)]
    if top + height > grid.shape[0] or lefts[-1] + width > grid.shape[1]:
        raise ValueError(f"{path} holds no row {row} of {count} images of {height}x{width}")
    tiles = np.stack([grid[top : top + height, left : left + width] for left in lefts])
    return torch.from_numpy(tiles).permute(0, 3, 1, 2)


def write_labelled_png(
    path: Path, images: Tensor, labels: Sequence[str], label_width: int = 240, font_size: int = 12
) -> Path:
    """Images ``[R, n, 3, H, W]`` in [0, 1] as one PNG with a row per label: the label's text, wrapped, in a
    white panel of ``label_width`` pixels, then the row's ``n`` images (a new file, never written over)."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    if images.ndim != 5 or images.shape[0] != len(labels):
        raise ValueError(
            f"write_labelled_png needs images [R, n, 3, H, W] with R = {len(labels)} labels, got {tuple(images.shape)}"
        )
    rows, n, _, height, width = images.shape
    pad = 2
    font = ImageFont.load_default(size=font_size)
    per_line = max(8, int((label_width - 2 * pad) / max(font.getlength("x"), 1.0)))
    canvas = Image.new("RGB", (label_width + n * (width + pad), rows * (height + pad)), "white")
    pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
    for row, label in enumerate(labels):
        top = row * (height + pad)
        panel = Image.new("RGB", (label_width - pad, height), "white")  # the text is clipped to its row
        lines = textwrap.wrap(label, per_line) or [""]
        ImageDraw.Draw(panel).multiline_text((pad, pad), "\n".join(lines), fill="black", font=font, spacing=1)
        canvas.paste(panel, (0, top))
        for column in range(n):
            tile = Image.fromarray(pixels[row, column].numpy(), "RGB")
            canvas.paste(tile, (label_width + column * (width + pad), top))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as handle:
        canvas.save(handle, format="png")
    return path


def batch_texts(batch: Batch) -> list[str]:
    """The text of each text row of ``batch`` (``Batch.captions``, which the vlp collators fill)."""
    if batch.captions is None:
        raise ValueError(
            "predict writes each row's text, but batch.captions is None: the data module's collator must "
            "put the raw texts in Batch.captions (every vlp data module does)"
        )
    return list(batch.captions)


def active_objective(task: Any, kind: type[T], purpose: str) -> T:
    """The task's first objective of type ``kind`` with a non-zero weight; a clear error without one."""
    for objective in task.active_objectives.values():
        if isinstance(objective, kind):
            return objective
    raise ValueError(
        f"{type(task).__name__}.predict writes {purpose}: it needs a {kind.__name__} with a non-zero loss "
        f"weight among the objectives (active: {sorted(task.active_objectives)})"
    )


def vocab_list(trainer: Any, name: str, purpose: str) -> list[str]:
    """The data module's ``vocab.json`` list ``name`` (read in its ``setup``), for ``purpose``."""
    datamodule = getattr(trainer, "datamodule", None)
    vocab = getattr(datamodule, "vocab", None)
    values = vocab.get(name) if isinstance(vocab, dict) else None
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ValueError(
            f"predict writes {purpose} by name: it reads the list {name!r} of the data's vocab.json "
            f"(the data module's `vocab`), which {type(datamodule).__name__} does not have"
        )
    return values


@torch.no_grad()
def itm_rows(task: Any, batch: Batch) -> list[Row]:
    """``{"key", "caption", "match_probability"}`` for each sample's own image with its caption: the
    first active ITM objective's softmax probability of "match" (class 1) over one encoder pass."""
    from vlp.objectives.itm import ITMObjective
    from vlp.tasks.e2e_base import fsdp_gathered

    objective = active_objective(task, ITMObjective, "ITM match probabilities")
    if batch.text_ids is None or batch.pixels is None:
        raise ValueError(f"{type(task).__name__}.predict needs batch.text_ids and batch.pixels")
    texts = batch_texts(batch)
    output = task.model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
    with fsdp_gathered(objective):
        logits = objective.head(output.pooled)
    probabilities = logits.float().softmax(-1)[:, 1].tolist()
    return [
        {"key": key, "caption": text, "match_probability": p}
        for key, text, p in zip(batch.keys, texts, probabilities)
    ]


class PredictionWriter:
    """Mixin of a LightningModule (before it in the bases): ``predict`` writes files under ``predict_dir``.

    The task sets ``predict_dir`` (``str | None``) in its ``__init__`` and lists the files it writes in
    :attr:`PREDICT_FILES` (glob patterns, refused when already present, before any work). How a batch
    becomes files is the task's: most collect rows (:class:`RowPredictionWriter`); retrieval scores all
    pairs at the end and ERNIE-ViLG writes images per batch, with predict hooks of their own.
    """

    PREDICT_FILES: ClassVar[tuple[str, ...]] = ()
    predict_dir: str | None

    @property
    def predict_path(self) -> Path:
        """Where this run's predictions go (see :func:`predict_folder`)."""
        trainer = getattr(self, "_trainer", None)
        return predict_folder(self.predict_dir, None if trainer is None else trainer.default_root_dir)

    def on_predict_start(self) -> None:
        refuse_existing(self.predict_path, self.PREDICT_FILES)


class RowPredictionWriter(PredictionWriter, ABC):
    """A :class:`PredictionWriter` of record files: the task returns the rows of a batch from
    :meth:`predict_rows`, and writes every process's rows, sorted by :attr:`PREDICT_ORDER`, in
    :meth:`write_predictions` (first process only). Put it before the task's other bases.
    """

    PREDICT_ORDER: ClassVar[str] = "key"
    _predict_rows: list[Row]

    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._predict_rows = []

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Row]:
        if len(batch) == 0:  # every sample of the batch was skipped (and counted) by the loader
            return []
        rows = self.predict_rows(batch, batch_idx)
        self._predict_rows.extend(rows)
        return rows

    @abstractmethod
    def predict_rows(self, batch: Batch, batch_idx: int) -> list[Row]:
        """The rows of one (non-empty) batch; images, if any, are written here, per process."""

    def on_predict_epoch_end(self) -> None:
        rows = gather_rows(self._predict_rows)
        self._predict_rows = []
        if rows is None:
            return
        folder = self.predict_path
        written = self.write_predictions(sorted(rows, key=lambda row: row[self.PREDICT_ORDER]), folder)
        log.info("vlp: %d predictions written to %s", len(rows), ", ".join(str(p) for p in written))

    @abstractmethod
    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        """Write ``rows`` (every process's) under ``folder``; the paths written."""


def head_classes(head: nn.Module) -> int | None:
    """The number of classes a classifier head outputs (its last linear layer's), if it can be told."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None
