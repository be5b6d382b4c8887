"""Generative VQA's loss: the image→text LM on the answer tokens only.

The image→text pass of :class:`~vlp.models.ernie_vilg.model.ERNIEViLG` reads ``[image codes; text]`` under
its UniLM mask (the image the bidirectional source, the text the causal target) with the text
``[CLS] question [SEP] answer [SEP]`` (:class:`~vlp.datamodules.generative_vqa.GenerativeVQACollator`):
the question is a causal prefix every answer token attends to, like the image. Text slot ``t`` predicts
token ``t + 1``; the targets are the answer's tokens and its closing ``[SEP]``, i.e. the real tokens at
positions ``>= len([CLS] q [SEP])``, the question's length read from ``batch.text_mask`` (the prompt).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlp.batch import Batch
from vlp.models.ernie_vilg.model import ERNIEViLGOutput
from vlp.objectives.lm_directions import ImageToTextLM


def answer_targets(caption_mask: Tensor, question_mask: Tensor) -> Tensor:
    """``[B, T - 1]`` bool: which next-token targets (token ``t + 1`` of ``caption_mask [B, T]``, read from
    slot ``t``) belong to the answer, the question's ``question_mask.sum(1)`` first tokens excepted."""
    question_len = question_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(1, caption_mask.shape[1], device=caption_mask.device)[None]
    return caption_mask[:, 1:].bool() & (positions >= question_len)


class AnswerLM(ImageToTextLM):
    """Next-token cross-entropy of the answer given the image codes and the question (module docstring);
    logged as ``gvqa_acc`` (token accuracy) and ``gvqa_nll``.

    Reads ``batch.caption_ids``/``caption_mask`` (question and answer) and ``batch.text_mask`` (the
    question alone).
    """

    prefix = "gvqa"

    def logits_and_targets(self, outputs: ERNIEViLGOutput, batch: Batch) -> tuple[Tensor, Tensor]:
        if batch.caption_ids is None or batch.caption_mask is None or batch.text_mask is None:
            raise ValueError(
                "AnswerLM needs batch.caption_ids/caption_mask ([CLS] q [SEP] a [SEP]) and batch.text_mask "
                "(the question): read the data with a GenerativeVQACollator"
            )
        ids = batch.caption_ids
        states = outputs.text_states
        if states.shape[:2] != ids.shape:
            raise ValueError(
                f"text states {tuple(states.shape[:2])} do not match batch.caption_ids {tuple(ids.shape)}"
            )
        has_target = answer_targets(batch.caption_mask, batch.text_mask)
        return outputs.model.text_logits(states[:, :-1][has_target]), ids[:, 1:][has_target]
