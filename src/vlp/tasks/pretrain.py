"""Image-text pre-training (MLM, ITM, WPA, ...) of a single-stream fusion assembly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def itm_view(model: nn.Module, batch: Batch, visual: VisualTokens) -> FusionOutput:
    """The ``"itm"`` view: ``model``'s pass over the clean text with the image ``batch.itm_image_index``
    names (another sample's for a negative), taken from ``visual``, the batch's embedded images. With
    caption-edit negatives the text is ``batch.itm_text_ids`` (an edit of the caption for those rows)."""
    if batch.itm_image_index is None:
        raise ValueError("the ITM view needs batch.itm_image_index; enable ITM pairs in the data module")
    shown = visual.select(batch.itm_image_index)
    if batch.itm_text_ids is not None:
        return model(batch.itm_text_ids, batch.itm_text_mask, None, visual=shown)
    return model(batch.text_ids, batch.text_mask, None, visual=shown)


class PretrainTask(RowPredictionWriter, ObjectiveTask):
    """Pre-training on image-text pairs, one encoder pass per view the active objectives read.

    As in official ViLT: the ``"mlm"`` view is the masked text with each sample's own image; the ``"itm"``
    view (ITM, WPA) is the unmasked text with the image ``batch.itm_image_index`` names (another sample's
    for a negative). Masked words would otherwise hide exactly what ITM has to compare, and negatives
    would teach MLM nothing. With both kinds of objective active a step costs two encoder passes; the
    images are embedded once (``model.embed_images``) and shared by both.

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

    def mlm_view_rows(self, batch: Batch) -> dict[str, Tensor]:
        """``text_rows`` for the MLM view when everything reading it reads only the labelled text rows
        and [CLS] (MLM alone does): the last layer then computes ~15 % of the text rows, not every row."""
        readers = [o for o in self.active_objectives.values() if o.view == "mlm"]
        if batch.mlm_labels is None or not isinstance(self.model, ViLT):
            return {}  # (MLMObjective names the missing labels)
        if not all(o.reads_only_labelled_text for o in readers):
            return {}
        return {"text_rows": batch.mlm_labels != -100}

    def forward_model(self, batch: Batch) -> dict[str, FusionOutput]:
        views = {objective.view for objective in self.active_objectives.values()}
        outputs = {}
        visual = self.model.embed_images(batch.pixels, batch.pixel_mask)  # once for both views
        if "mlm" in views:
            outputs["mlm"] = self.model(
                mlm_text_ids(batch), batch.text_mask, None, visual=visual, **self.mlm_view_rows(batch)
            )
        if "itm" in views:
            outputs["itm"] = itm_view(self.model, batch, visual)
        return outputs

    def predict_rows(self, batch: Batch, batch_idx: int) -> list[Row]:
        return itm_rows(self, batch)

    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        return [write_jsonl(folder / "itm_scores.jsonl", rows)]
