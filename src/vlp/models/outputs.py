"""Outputs shared by the fusion assemblies, read by the objectives."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from vlp.models.embedders.base import VisualTokens


@dataclass
class FusionOutput:
    """Hidden states of a single-stream encoder over ``[text; image]``."""

    text_states: Tensor  # [B, L, D]
    image_states: Tensor  # [B, N, D]
    text_mask: Tensor  # [B, L] bool
    image_mask: Tensor  # [B, N] bool
    pooled: Tensor  # [B, D], from the first text token ([CLS])
    visual: VisualTokens


@dataclass
class DecoderOutput:
    """Per-layer query states of a DETR-style decoder, read by the detection objective.

    Every layer's output passes through the decoder's final norm, so one head serves all layers and the
    auxiliary losses (DETR) supervise every layer at once.
    """

    query_states: Tensor  # [num_layers, B, Q, D], the last layer last


@dataclass
class DetectionPredictions:
    """What a detection head predicts for every decoder layer and query."""

    logits: Tensor  # [num_layers, B, Q, num_classes + 1], the last class is "no object"
    boxes: Tensor  # [num_layers, B, Q, 4] normalised cxcywh in (0, 1)
    attribute_logits: Tensor | None = None  # [num_layers, B, Q, A] multi-label logits, or None

    @property
    def num_classes(self) -> int:
        """Object categories, without the no-object class."""
        return self.logits.shape[-1] - 1
