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

from abc import abstractmethod
from typing import ClassVar

from torch import Tensor

from vlp.batch import Batch
from vlp.models.ernie_vilg.model import ERNIEViLGOutput
from vlp.objectives.base import Objective, ObjectiveOutput
from vlp.objectives.token_loss import token_cross_entropy


class DirectionLM(Objective):
    """What both directions share: label smoothing, the check of the outputs' direction (the one
    :attr:`view` names), the cross-entropy and its logged figures ``<prefix>_acc`` and ``<prefix>_nll``.

    Args:
        label_smoothing: as PyTorch's; ``<prefix>_nll`` is logged without it.
    """

    prefix: ClassVar[str]

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    @abstractmethod
    def logits_and_targets(self, outputs: ERNIEViLGOutput, batch: Batch) -> tuple[Tensor, Tensor]:
        """The head's logits ``[M, V]`` and their targets ``[M]``."""

    def forward(self, outputs: ERNIEViLGOutput, batch: Batch) -> ObjectiveOutput:
        if not isinstance(outputs, ERNIEViLGOutput) or outputs.direction != self.view:
            got = getattr(outputs, "direction", type(outputs).__name__)
            raise ValueError(
                f"{type(self).__name__} reads an ERNIEViLGOutput of direction {self.view!r}, got {got!r}"
            )
        logits, targets = self.logits_and_targets(outputs, batch)
        acc, nll = f"{self.prefix}_acc", f"{self.prefix}_nll"
        if targets.numel() == 0:  # keeps the head in the graph (DDP) with a zero loss
            zero = logits.sum() * 0.0
            return ObjectiveOutput(zero, {acc: zero.detach(), nll: zero.detach()})
        result = token_cross_entropy(logits, targets, self.label_smoothing)
        return ObjectiveOutput(result.loss, {acc: result.accuracy, nll: result.nll})


class TextToImageLM(DirectionLM):
    """Next-code cross-entropy of the image given the text (``batch.image_codes`` ``[B, h*w]``)."""

    view = "text_to_image"
    prefix = "t2i"

    def logits_and_targets(self, outputs: ERNIEViLGOutput, batch: Batch) -> tuple[Tensor, Tensor]:
        if batch.image_codes is None:
            raise ValueError(
                "TextToImageLM needs batch.image_codes (the task encodes the pixels with the VQGAN)"
            )
        states = outputs.image_states
        if states.shape[:2] != batch.image_codes.shape:
            raise ValueError(
                f"image states {tuple(states.shape[:2])} do not match batch.image_codes {tuple(batch.image_codes.shape)}"
            )
        return outputs.model.image_logits(states.flatten(0, 1)), batch.image_codes.flatten()


class ImageToTextLM(DirectionLM):
    """Next-token cross-entropy of the caption (``batch.caption_ids``/``caption_mask``) given the image,
    on real next tokens only (the text half of the head sees ``[M, D]``)."""

    view = "image_to_text"
    prefix = "i2t"

    def logits_and_targets(self, outputs: ERNIEViLGOutput, batch: Batch) -> tuple[Tensor, Tensor]:
        if batch.caption_ids is None or batch.caption_mask is None:
            raise ValueError("ImageToTextLM needs batch.caption_ids and batch.caption_mask")
        ids, mask = batch.caption_ids, batch.caption_mask.bool()
        states = outputs.text_states
        if states.shape[:2] != ids.shape:
            raise ValueError(
                f"text states {tuple(states.shape[:2])} do not match batch.caption_ids {tuple(ids.shape)}"
            )
        has_target = mask[:, 1:]
        return outputs.model.text_logits(states[:, :-1][has_target]), ids[:, 1:][has_target]
