"""Object detection with E2E-VLP, with or without paired text (the paper's §5.8 set-up).

The encoder reads ``[caption; image]`` (``use_text: true``, the paired text the paper shows helps
detection) or the image alone; the object queries are decoded against it and trained with DETR's set
loss (:class:`~vlp.objectives.DetectionObjective`). Validation and test also feed the last decoder
layer's predictions to a COCO-style mAP (:mod:`vlp.metrics.detection`) and log ``val/map`` (AP at IoU
0.50:0.95), ``val/map_50``, ``val/map_75``, ``val/map_small|medium|large`` and ``val/mar_100``.
torchmetrics gathers the detections of every process before computing.

``predict`` writes three files under ``predict_dir``:

* ``detections.json``, COCO's results format: ``[{"image_id", "category_id", "bbox": [x, y, w, h],
  "score"}]``, every query of the last decoder layer as one detection (its most probable category and
  that probability, as the mAP above counts them; COCO's evaluation keeps up to 100 per image). Boxes are
  in pixels of the image as the model saw it (after the data module's resize, padding excluded),
  clipped to it;
* ``image_ids.json``: COCO ``images`` entries ``[{"id", "key", "width", "height"}]``: ``image_id`` ``i``
  is the ``i``-th sample key in sorted order, and ``width``/``height`` are the size the boxes refer to
  (scale by the original size over these to get boxes on the original image);
* ``categories.json``: ``[{"id", "name"}]``: ``category_id`` is the index in ``vocab.json``'s
  ``categories`` (0-based, the data module's label index).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert

from vlp.batch import Batch
from vlp.metrics.detection import detections, ground_truth, image_sizes, map_figures, mean_average_precision
from vlp.models.outputs import DecoderOutput
from vlp.objectives.detection import DetectionObjective, annotated_images
from vlp.tasks.base import check_objective_types
from vlp.tasks.e2e_base import E2ETask, fsdp_gathered
from vlp.tasks.predict_files import Row, RowPredictionWriter, vocab_list, write_json


class DetectionEvaluation:
    """Mixin for an :class:`~vlp.tasks.e2e_base.E2ETask` that scores detections: the COCO mAP of a
    :class:`~vlp.objectives.DetectionObjective`'s last decoder layer on the batch's annotated images, logged
    at the end of validation and test as ``<stage>/map``, ``<stage>/map_50`` ... (:mod:`vlp.metrics.detection`).

    The task builds ``val_map`` and ``test_map`` (:func:`~vlp.metrics.detection.mean_average_precision`)
    and calls :meth:`update_map` in its ``evaluate``. Put the mixin before the LightningModule base so its
    hooks are the ones Lightning calls.
    """

    val_map: MeanAveragePrecision
    test_map: MeanAveragePrecision
    log: Any

    def update_map(
        self, detector: DetectionObjective, output: DecoderOutput, batch: Batch, stage: str
    ) -> None:
        """Add the detections ``detector`` makes of ``output`` (the batch's detection view) to the stage's
        mAP. The batch needs ``targets`` and ``pixel_mask``. Only annotated images are scored; the metric is
        updated on every batch (maybe with no image) so that every process computes it."""
        with fsdp_gathered(detector):
            predictions = detector.predict(output, last_only=True)
        sizes = image_sizes(batch.pixel_mask)
        found = detections(predictions.logits[0], predictions.boxes[0], sizes, detector.scores)
        metric = self.val_map if stage == "val" else self.test_map
        truth = ground_truth(batch.targets, sizes)
        metric.update(annotated_images(batch, found), annotated_images(batch, truth))

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> None:
        if not metric.update_called:
            return
        for name, value in map_figures(metric.compute()).items():
            self.log(f"{stage}/{name}", value, sync_dist=False)  # computed over every process's detections
        metric.reset()


class DetectionTask(RowPredictionWriter, DetectionEvaluation, E2ETask):
    """Fine-tuning and evaluation of E2E-VLP detection (data: an :class:`~vlp.datamodules.e2e.ObjectDecoder`
    with an :class:`~vlp.datamodules.e2e.E2ECollator` with ``targets: true``).

    Args:
        use_text: encode the batch's caption with the image (paired text); ``False``: the image alone.
        Others: as :class:`~vlp.tasks.base.ObjectiveTask`; the objectives must be
            :class:`~vlp.objectives.DetectionObjective` (the first active one is evaluated).
    """

    VIEWS = ("detection",)
    PREDICT_FILES = ("detections.json", "image_ids.json", "categories.json")

    def __init__(self, *args: Any, use_text: bool = True, **kwargs: Any) -> None:
        self.use_text = use_text  # read by uses_text() inside super().__init__
        super().__init__(*args, **kwargs)
        check_objective_types(self.objectives, DetectionObjective, "DetectionTask evaluates")
        self.val_map = mean_average_precision()
        self.test_map = mean_average_precision()
        self._categories: list[str] = []

    def uses_text(self) -> bool:
        return self.use_text

    def forward_model(self, batch: Batch) -> DecoderOutput:
        if batch.pixels is None:
            raise ValueError("DetectionTask needs batch.pixels")
        if self.use_text:
            if batch.text_ids is None:
                raise ValueError("use_text=True needs batch.text_ids (the paired caption)")
            fusion = self.model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        else:
            fusion = self.model(None, None, batch.pixels, batch.pixel_mask)
        return self.model.detect(fusion)

    @property
    def detector(self) -> DetectionObjective:
        """The objective whose head is evaluated."""
        return next(iter(self.active_objectives.values()))  # type: ignore[return-value]

    # --------------------------------------------------------------------------------- evaluation

    def evaluate(self, batch: Batch, stage: str) -> None:
        if batch.targets is None or batch.pixel_mask is None:
            raise ValueError("detection evaluation needs batch.targets and batch.pixel_mask")
        outputs = self.forward_model(batch)
        total = torch.zeros((), device=self.device)
        for name, objective in self.active_objectives.items():
            result = objective(outputs, batch)
            total = total + self.loss_weights[name] * result.loss
            self.log(f"{stage}/{name}_loss", result.loss, batch_size=len(batch), sync_dist=True)
        self.log(f"{stage}/loss", total, batch_size=len(batch), sync_dist=True)
        self.update_map(self.detector, outputs, batch, stage)

    # --------------------------------------------------------------------------------- prediction

    def on_predict_start(self) -> None:
        super().on_predict_start()
        self._categories = vocab_list(self.trainer, "categories", "detection categories")
        classes = self.detector.head.num_classes
        if classes != len(self._categories):
            raise ValueError(
                f"the detection head predicts {classes} categories but the data's vocab.json lists "
                f"{len(self._categories)}: predict with the vocab.json the task was trained on"
            )

    @torch.no_grad()
    def predict_rows(self, batch: Batch, batch_idx: int) -> list[Row]:
        """One row per image: its key, the size its boxes refer to and its detections."""
        if batch.pixels is None:
            raise ValueError("DetectionTask.predict needs batch.pixels")
        outputs = self.forward_model(batch)
        with fsdp_gathered(self.detector):
            predictions = self.detector.predict(outputs, last_only=True)
        if batch.pixel_mask is None:
            sizes = torch.tensor([batch.pixels.shape[-2:]] * len(batch), device=batch.pixels.device)
        else:
            sizes = image_sizes(batch.pixel_mask)
        found = detections(predictions.logits[0], predictions.boxes[0], sizes, self.detector.scores)
        rows = []
        for key, (height, width), image in zip(batch.keys, sizes.tolist(), found):
            boxes = image["boxes"].clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            boxes = box_convert(boxes, "xyxy", "xywh")
            rows.append(
                {
                    "key": key,
                    "width": width,
                    "height": height,
                    "detections": [
                        {"category_id": label, "bbox": box, "score": score}
                        for label, box, score in zip(
                            image["labels"].tolist(), boxes.tolist(), image["scores"].tolist()
                        )
                    ],
                }
            )
        return rows

    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        images = [
            {"id": i, "key": r["key"], "width": r["width"], "height": r["height"]} for i, r in enumerate(rows)
        ]
        results = [{"image_id": i, **found} for i, r in enumerate(rows) for found in r["detections"]]
        categories = [{"id": i, "name": name} for i, name in enumerate(self._categories)]
        return [
            write_json(folder / "detections.json", results),
            write_json(folder / "image_ids.json", images),
            write_json(folder / "categories.json", categories),
        ]
