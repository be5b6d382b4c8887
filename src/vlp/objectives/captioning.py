"""Captioning: teacher-forced next-token cross-entropy of a decoder over caption tokens."""

from __future__ import annotations

from vlp.batch import Batch
from vlp.models.e2e_vlp.model import CaptionOutput
from vlp.objectives.base import Objective, ObjectiveOutput
from vlp.objectives.token_loss import token_cross_entropy


class CaptioningObjective(Objective):
    """Cross-entropy of token ``t + 1`` given the decoder state at ``t``, on real targets only.

    Reads :class:`~vlp.models.e2e_vlp.model.CaptionOutput` (decoder states over ``batch.caption_ids`` and the
    model's LM head) and ``batch.caption_ids`` / ``batch.caption_mask``. The target positions (real
    tokens after the first) are gathered before the head, so the vocabulary projection sees ``[M, D]``,
    never ``[B, T, D]``. The LM head is the model's (generation needs it too), so this objective owns none.

    Args:
        label_smoothing: ``eps``: the target distribution is ``(1 - eps)`` on the token plus ``eps``
            spread uniformly over the vocabulary (PyTorch's ``label_smoothing``). ``caption_nll`` is
            logged without it, so perplexities stay comparable.
    """

    view = "caption"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, outputs: CaptionOutput, batch: Batch) -> ObjectiveOutput:
        if batch.caption_ids is None or batch.caption_mask is None:
            raise ValueError(
                "CaptioningObjective needs batch.caption_ids and batch.caption_mask; enable captions in the "
                "data module"
            )
        ids, mask = batch.caption_ids, batch.caption_mask.bool()
        if outputs.states.shape[:2] != ids.shape:
            raise ValueError(
                f"outputs.states {tuple(outputs.states.shape)} must be [B, T, D] over batch.caption_ids "
                f"{tuple(ids.shape)}"
            )
        has_target = mask[:, 1:]
        targets = ids[:, 1:][has_target]
        logits = outputs.head(outputs.states[:, :-1][has_target]).float()  # [M, V]
        if targets.numel() == 0:  # keeps every parameter in the graph (DDP) with a zero loss
            zero = logits.sum() * 0.0
            return ObjectiveOutput(zero, {"caption_acc": zero.detach(), "caption_nll": zero.detach()})
        result = token_cross_entropy(logits, targets, self.label_smoothing)
        return ObjectiveOutput(result.loss, {"caption_acc": result.accuracy, "caption_nll": result.nll})
