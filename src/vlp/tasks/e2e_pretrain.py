"""E2E-VLP joint pre-training: MLM and ITM on the encoder, detection and captioning on the decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlp.batch import Batch
from vlp.metrics.detection import mean_average_precision
from vlp.objectives.detection import DetectionObjective
from vlp.tasks.detection import DetectionEvaluation
from vlp.tasks.e2e_base import E2ETask
from vlp.tasks.predict_files import Row, RowPredictionWriter, itm_rows, write_jsonl
from vlp.tasks.pretrain import itm_view, mlm_text_ids


class E2EPretrainTask(RowPredictionWriter, DetectionEvaluation, E2ETask):
    """Pre-training an :class:`~vlp.models.e2e_vlp.model.E2EVLP` (Xu et al. 2021) with any of four views.

    * ``"mlm"``, ``"itm"``: as :class:`~vlp.tasks.pretrain.PretrainTask`'s (the masked text with each
      sample's own image; the clean text with the image ``batch.itm_image_index`` names);
    * ``"detection"``: the object queries decoded against the encoder pass over ``[text; own image]``.
      With MLM active that is the MLM pass (masked text), so the two share one encoder pass; otherwise
      an encoder pass over the clean text;
    * ``"caption"``: the caption tokens decoded, teacher-forced, against an image-only encoder pass (the
      caption must not be visible to the encoder it is generated from).

    Each objective's weight is a real multiplier; 0 skips it, its view and its passes, and freezes what
    only it reaches (:mod:`vlp.tasks.e2e_base`). A step with all four views costs three encoder passes
    over one CNN pass: the images are embedded once and every view reads those tokens (ITM's reordered).

    With detection active, validation and test also feed the detection view's last decoder layer to COCO's
    mAP (:mod:`vlp.metrics.detection`, on the batch's ``targets``: converted COCO instances, Visual
    Genome objects) and log ``val/map``, ``val/map_50``, ``val/map_75``, ``val/map_small|medium|large`` and
    ``val/mar_100`` as :class:`~vlp.tasks.detection.DetectionTask` does. The detections are those the
    objective is trained on: with MLM active, decoded against the pass over the masked text.

    ``predict`` writes ``itm_scores.jsonl`` as :class:`~vlp.tasks.pretrain.PretrainTask` does (each
    sample's caption with its own image; it needs the ITM objective active).
    """

    VIEWS = ("mlm", "itm", "detection", "caption")
    PREDICT_FILES = ("itm_scores.jsonl",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.val_map = mean_average_precision()
        self.test_map = mean_average_precision()

    def forward_model(self, batch: Batch) -> dict[str, Any]:
        views = self.views_used()
        outputs: dict[str, Any] = {}
        if batch.pixels is None:
            raise ValueError("E2EPretrainTask needs batch.pixels")
        visual = self.model.embed_images(batch.pixels, batch.pixel_mask)
        if views & {"mlm", "detection"}:
            text = mlm_text_ids(batch) if "mlm" in views else batch.text_ids
            if text is None or batch.text_mask is None:
                raise ValueError("the detection view reads the paired text: batch.text_ids is None")
            paired = self.model(text, batch.text_mask, None, visual=visual)
            if "mlm" in views:
                outputs["mlm"] = paired
            if "detection" in views:
                outputs["detection"] = self.model.detect(paired)
        if "itm" in views:
            outputs["itm"] = itm_view(self.model, batch, visual)
        if "caption" in views:
            if batch.caption_ids is None:
                raise ValueError(
                    "the caption view needs batch.caption_ids; enable captioning in the data module"
                )
            image_only = self.model(None, None, None, visual=visual)
            outputs["caption"] = self.model.decode_captions(image_only, batch.caption_ids, batch.caption_mask)
        return outputs

    def evaluate(self, batch: Batch, stage: str) -> None:
        outputs = self.forward_model(batch)
        self.compute_losses(batch, stage, outputs)
        detector = next(
            (o for o in self.active_objectives.values() if isinstance(o, DetectionObjective)), None
        )
        if detector is None or batch.targets is None or batch.pixel_mask is None:
            return
        self.update_map(detector, outputs["detection"], batch, stage)

    def predict_rows(self, batch: Batch, batch_idx: int) -> list[Row]:
        return itm_rows(self, batch)

    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        return [write_jsonl(folder / "itm_scores.jsonl", rows)]
