"""Grounded-word masking: mask the words that name what is in the image more often than the rest.

Plain MLM masks words uniformly, and most of them ("a", "of", "left", ...) can be predicted from the text
alone, which a model from scratch learns first and may never leave: it then has no reason to read the
image, and image-text matching, which needs the same reading, stays at chance. ERNIE-ViL (Yu et al.,
2021) answers this with scene-graph prediction, masking object, attribute and relation words. vlp's
version is the simplest form of it: every whole word that belongs to a given vocabulary (a dataset's
categories and attributes, from ``vocab.json``) is masked with its own probability, on top of the
ordinary MLM masking.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor
from transformers import BatchEncoding


def grounded_word_mask(
    captions: list[str],
    encoding: BatchEncoding,
    words: Collection[str],
    probability: float,
    generator: torch.Generator,
) -> Tensor:
    """``[B, L]`` bool: the tokens of the words of ``words`` that were drawn for masking.

    A word is a pre-tokenizer word (``encoding.word_ids``) whose text, lower-cased, is in ``words``;
    each occurrence is drawn once with ``probability`` and then masked whole (all its word pieces).
    ``encoding`` must come from a fast tokenizer called with ``return_offsets_mapping=True``.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"grounded masking probability must be in [0, 1], got {probability}")
    offsets = encoding["offset_mapping"]
    batch, length = offsets.shape[:2]
    draws = torch.rand(batch, length, generator=generator) < probability
    vocabulary = {word.lower() for word in words}
    picked = torch.zeros(batch, length, dtype=torch.bool)
    for row, caption in enumerate(captions):
        spans: dict[int, list[int]] = {}
        for position, word in enumerate(encoding.word_ids(row)):
            if word is not None:
                spans.setdefault(word, []).append(position)
        for positions in spans.values():
            start = int(offsets[row, positions[0], 0])
            end = int(offsets[row, positions[-1], 1])
            if caption[start:end].lower() in vocabulary and draws[row, positions[0]]:
                picked[row, positions] = True
    return picked
