"""NLVR2-style visual reasoning over image pairs: two encoder passes, one per image.

As official ViLT: the statement is read once with the left image as modality type 1 and once with the
right image as type 2, and the classifier sees both pooled states. The modality-type table grows from
two rows (text, image) to three: rows 0 and 1 are kept and row 2 starts as a copy of row 1, so right
after growth the right image is embedded exactly as an image was in pre-training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlp.batch import Batch
from vlp.models.outputs import FusionOutput
from vlp.objectives.nlvr2 import NLVR2Objective
from vlp.tasks.base import ObjectiveTask, check_views
from vlp.tasks.e2e_base import fsdp_gathered
from vlp.tasks.predict_files import Row, RowPredictionWriter, active_objective, batch_texts, write_jsonl

MODALITY_TABLE = "token_type_embeddings"
MODALITY_KEY = f"model.{MODALITY_TABLE}.weight"


def grow_modality_table(weight: Tensor) -> Tensor:
    """``[2, D] -> [3, D]``: rows 0 and 1 kept, row 2 = row 1 (official ViLT's NLVR2 set-up)."""
    if weight.ndim != 2 or weight.shape[0] != 2:
        raise ValueError(f"expected a 2-row modality-type table, got shape {tuple(weight.shape)}")
    return torch.cat([weight, weight[1:2]], dim=0)


def grow_modality_types(model: nn.Module) -> bool:
    """Give ``model`` its 3-row table in place (see :func:`grow_modality_table`); False if it has 3 already."""
    table = getattr(model, MODALITY_TABLE, None)
    if not isinstance(table, nn.Embedding):
        raise ValueError(
            f"NLVR2Task needs a model with a `{MODALITY_TABLE}` nn.Embedding (ViLT, E2EVLP), {type(model).__name__} has none"
        )
    if table.num_embeddings == 3:
        return False
    grown = nn.Embedding(3, table.embedding_dim, device=table.weight.device, dtype=table.weight.dtype)
    with torch.no_grad():
        grown.weight.copy_(grow_modality_table(table.weight))
    setattr(model, MODALITY_TABLE, grown)
    return True


class NLVR2Task(RowPredictionWriter, ObjectiveTask):
    """Fine-tuning on pair batches (:class:`~vlp.datamodules.pairs.PairCollator`) with
    :class:`~vlp.objectives.NLVR2Objective`; logs ``val/nlvr2_acc``.

    The model may come with 2 modality types (as pre-trained; grown here, before ``init_from`` loads) or
    3. A pre-training checkpoint's 2-row table is grown the same way when it is loaded, which the
    ``init_from`` report lists under "adapted".

    ``predict`` writes ``nlvr2_predictions.jsonl`` under ``predict_dir``: one line per pair sample,
    ``{"identifier": <sample key>, "statement", "prediction": true/false, "probability_true"}``, the
    classifier's probability that the statement is true (``prediction`` is its arg-max, as accuracy counts).
    """

    PREDICT_FILES = ("nlvr2_predictions.jsonl",)
    PREDICT_ORDER = "identifier"

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        grow_modality_types(model)
        super().__init__(model, *args, **kwargs)
        check_views(
            self.objectives, (None,), "NLVR2Task hands its objectives the (left, right) pair of passes"
        )

    def adapt_init_state(self, state: dict[str, Tensor]) -> dict[str, str]:
        table = state.get(MODALITY_KEY)
        if table is None or table.shape[0] != 2:
            return {}
        state[MODALITY_KEY] = grow_modality_table(table)
        return {MODALITY_KEY: "grown from 2 to 3 modality types (rows 0, 1 kept; row 2 = row 1)"}

    def forward_model(self, batch: Batch) -> tuple[FusionOutput, FusionOutput]:
        if batch.pixels_right is None or batch.text_ids is None:
            raise ValueError(
                "NLVR2Task needs pair batches (pixels, pixels_right, text_ids): read the data with a "
                "PairDecoder and a PairCollator (data.init_args.decoder / collator)"
            )
        left = self.model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask, image_token_type=1)
        right = self.model(
            batch.text_ids, batch.text_mask, batch.pixels_right, batch.pixel_mask_right, image_token_type=2
        )
        return left, right

    @torch.no_grad()
    def predict_rows(self, batch: Batch, batch_idx: int) -> list[Row]:
        objective = active_objective(self, NLVR2Objective, "true/false labels")
        statements = batch_texts(batch)
        left, right = self.forward_model(batch)
        with fsdp_gathered(objective):
            logits = objective.head(torch.cat([left.pooled, right.pooled], dim=-1)).float()
        predictions = (logits.argmax(-1) == 1).tolist()
        probabilities = logits.softmax(-1)[:, 1].tolist()
        return [
            {"identifier": key, "statement": text, "prediction": label, "probability_true": p}
            for key, text, label, p in zip(batch.keys, statements, predictions, probabilities)
        ]

    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        return [write_jsonl(folder / "nlvr2_predictions.jsonl", rows)]
