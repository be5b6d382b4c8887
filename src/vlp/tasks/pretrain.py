"""Image-text pre-training (MLM, ITM, WPA, ...) of a single-stream fusion assembly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlp.batch import Batch
from vlp.models.embedders.base import VisualTokens
from vlp.models.outputs import FusionOutput
from vlp.models.vilt import ViLT
from vlp.tasks.base import ObjectiveTask, check_views
from vlp.tasks.predict_files import Row, RowPredictionWriter, itm_rows, write_jsonl

VIEWS = ("mlm", "itm")


def mlm_text_ids(batch: Batch) -> Tensor:
    """The text of the ``"mlm"`` view: the masked ids."""
    if batch.mlm_text_ids is None:
        raise ValueError("the MLM view needs batch.mlm_text_ids; enable MLM masking in the data module")
    return batch.mlm_text_ids


def itm_text(batch: Batch) -> tuple[Tensor, Tensor]:
    """The text of the ``"itm"`` view: the caption, or with caption-edit negatives ``batch.itm_text_ids``
    (an edit of the caption for those rows)."""
    if batch.itm_text_ids is not None:
        return batch.itm_text_ids, batch.itm_text_mask
    return batch.text_ids, batch.text_mask


def itm_view(model: nn.Module, batch: Batch, visual: VisualTokens, **rows: Tensor) -> FusionOutput:
    """The ``"itm"`` view: ``model``'s pass over the clean text with the image ``batch.itm_image_index``
    names (another sample's for a negative), taken from ``visual``, the batch's embedded images."""
    if batch.itm_image_index is None:
        raise ValueError("the ITM view needs batch.itm_image_index; enable ITM pairs in the data module")
    text_ids, text_mask = itm_text(batch)
    return model(text_ids, text_mask, None, visual=visual.select(batch.itm_image_index), **rows)


class PretrainTask(RowPredictionWriter, ObjectiveTask):
    """Pre-training on image-text pairs, over each view the active objectives read.

    As in official ViLT: the ``"mlm"`` view is the masked text with each sample's own image; the ``"itm"``
    view (ITM, WPA) is the unmasked text with the image ``batch.itm_image_index`` names (another sample's
    for a negative). Masked words would otherwise hide exactly what ITM has to compare, and negatives
    would teach MLM nothing. The images are embedded once (``model.embed_images``) and shared by both
    views. Each view's last layer computes only the rows its objectives read (MLM: the masked positions
    and [CLS]; ITM: [CLS]; WPA reads every row).

    ``predict`` writes ``itm_scores.jsonl`` under ``predict_dir``: one line per sample,
    ``{"key", "caption", "match_probability"}``, the ITM head's probability that the sample's caption
    (the one the batch holds) matches its own image.
    """

    PREDICT_FILES = ("itm_scores.jsonl",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_views(self.objectives, VIEWS, f"PretrainTask runs {list(VIEWS)}")

    def configure_model(self) -> None:
        """FSDP2 (see :meth:`ObjectiveTask.configure_model`), then ``embed_images`` registered: it runs
        first in a step, outside ``forward``, so the model's root hooks must run for it."""
        super().configure_model()
        from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

        if isinstance(self.model, FSDPModule) and not getattr(self.model, "_vlp_methods_registered", False):
            register_fsdp_forward_method(self.model, "embed_images")
            self.model._vlp_methods_registered = True

    def view_rows(self, batch: Batch, view: str) -> dict[str, Tensor]:
        """``text_rows`` for a view when everything reading it reads only its labelled text rows and
        [CLS] (MLM reads those, ITM [CLS] alone): the last layer then computes those rows, not every row.
        The MLM view's labelled rows are the masked positions; the ITM view has none."""
        readers = [o for o in self.active_objectives.values() if o.view == view]
        if not isinstance(self.model, ViLT) or not all(o.reads_only_labelled_text for o in readers):
            return {}
        if view == "mlm":
            if batch.mlm_labels is None:
                return {}  # (MLMObjective names the missing labels)
            return {"text_rows": batch.mlm_labels != -100}
        text_ids, _ = itm_text(batch)
        return {"text_rows": torch.zeros_like(text_ids, dtype=torch.bool)}

    def forward_model(self, batch: Batch) -> dict[str, FusionOutput]:
        views = {objective.view for objective in self.active_objectives.values()}
        outputs = {}
        visual = self.model.embed_images(batch.pixels, batch.pixel_mask)  # once for both views
        if "mlm" in views:
            rows = self.view_rows(batch, "mlm")
            outputs["mlm"] = self.model(mlm_text_ids(batch), batch.text_mask, None, visual=visual, **rows)
        if "itm" in views:
            outputs["itm"] = itm_view(self.model, batch, visual, **self.view_rows(batch, "itm"))
        return outputs

    def predict_rows(self, batch: Batch, batch_idx: int) -> list[Row]:
        return itm_rows(self, batch)

    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        return [write_jsonl(folder / "itm_scores.jsonl", rows)]
