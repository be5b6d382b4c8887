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
