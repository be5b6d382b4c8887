"""The VQA score: the soft target of the answer the model ranks first."""

from __future__ import annotations

from torch import Tensor


def vqa_score(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-question VQA accuracy ``[B]``: the soft score (``min(1, agreeing annotators / 3)`` for VQAv2)
    the targets give to the model's top answer, as official ViLT's ``VQAScore`` computes it.

    A question whose answers are all outside the answer vocabulary (an all-zero target row) scores 0
    whatever the model says, as in the official evaluation on the answer vocabulary.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    top = logits.argmax(dim=-1, keepdim=True)
    return targets.float().gather(1, top).squeeze(1)
