"""ERNIE-ViLG's two language-model losses over one shared transformer: text→image and image→text.

Both read an :class:`~vlp.models.ernie_vilg.model.ERNIEViLGOutput` of their own direction (the task runs
one pass per direction, the views ``"text_to_image"`` and ``"image_to_text"``):

- :class:`TextToImageLM`: cross-entropy of code ``c_j`` from image slot ``j`` (image-code half of the
  output head), every slot of ``batch.image_codes``;
- :class:`ImageToTextLM`: cross-entropy of caption token ``t + 1`` from text slot ``t`` (text half of
  the head), on real tokens only, gathered before the head so the vocabulary projection sees
  ``[M, D]``, never ``[B, T, D]``.

The head is the model's (generation needs it too), so these objectives own no parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.batch import Batch
from vlp.models.ernie_vilg.model import ERNIEViLGOutput
from vlp.objectives.base import Objective, ObjectiveOutput


def _cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float) -> tuple[Tensor, Tensor, Tensor]:
    """Loss (with smoothing), plain NLL and accuracy of ``logits [M, V]`` against ``targets [M]``."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(1, targets[:, None])[:, 0]
    loss = nll.mean()
    if label_smoothing:
        loss = ((1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=-1)).mean()
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return loss, nll.mean().detach(), accuracy


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def _check_direction(outputs: ERNIEViLGOutput, direction: str, name: str) -> None:
    if not isinstance(outputs, ERNIEViLGOutput) or outputs.direction != direction:
        got = getattr(outputs, "direction", type(outputs).__name__)
        raise ValueError(f"{name} reads an ERNIEViLGOutput of direction {direction!r}, got {got!r}")


class TextToImageLM(Objective):
    """Next-code cross-entropy of the image given the text (``batch.image_codes`` ``[B, h*w]``).

    Args:
        label_smoothing: as PyTorch's; ``t2i_nll`` is logged without it.
    """

    view = "text_to_image"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        _check_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing

    def forward(self, outputs: ERNIEViLGOutput, batch: Batch) -> ObjectiveOutput:
        _check_direction(outputs, "text_to_image", type(self).__name__)
        if batch.image_codes is None:
            raise ValueError(
                "TextToImageLM needs batch.image_codes (the task encodes the pixels with the VQGAN)"
            )
        states = outputs.image_states
        if states.shape[:2] != batch.image_codes.shape:
            raise ValueError(
                f"image states {tuple(states.shape[:2])} do not match batch.image_codes {tuple(batch.image_codes.shape)}"
            )
        logits = outputs.model.image_logits(states.flatten(0, 1))
        loss, nll, accuracy = _cross_entropy(logits, batch.image_codes.flatten(), self.label_smoothing)
        return ObjectiveOutput(loss, {"t2i_acc": accuracy, "t2i_nll": nll})


class ImageToTextLM(Objective):
    """Next-token cross-entropy of the caption (``batch.caption_ids``/``caption_mask``) given the image.

    Args:
        label_smoothing: as PyTorch's; ``i2t_nll`` is logged without it.
    """

    view = "image_to_text"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        _check_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing

    def forward(self, outputs: ERNIEViLGOutput, batch: Batch) -> ObjectiveOutput:
        _check_direction(outputs, "image_to_text", type(self).__name__)
        if batch.caption_ids is None or batch.caption_mask is None:
            raise ValueError("ImageToTextLM needs batch.caption_ids and batch.caption_mask")
        ids, mask = batch.caption_ids, batch.caption_mask.bool()
        states = outputs.text_states
        if states.shape[:2] != ids.shape:
            raise ValueError(
                f"text states {tuple(states.shape[:2])} do not match batch.caption_ids {tuple(ids.shape)}"
            )
        has_target = mask[:, 1:]
        logits = outputs.model.text_logits(states[:, :-1][has_target])
        targets = ids[:, 1:][has_target]
        if targets.numel() == 0:  # keeps the head in the graph (DDP) with a zero loss
            zero = logits.sum() * 0.0
            return ObjectiveOutput(zero, {"i2t_acc": zero.detach(), "i2t_nll": zero.detach()})
        loss, nll, accuracy = _cross_entropy(logits, targets, self.label_smoothing)
        return ObjectiveOutput(loss, {"i2t_acc": accuracy, "i2t_nll": nll})
