"""The typed batch every task consumes, and the per-sample detection targets.

Fields a task does not need are ``None``, never dummies. Image tensors (``pixels``, ``pixels_right``) are
``[B, 3, H, W]``, padded to the batch maximum with ``pixel_mask`` marking real pixels; their dtype depends
on the stage:

- from a loader (the collators, :func:`~vlp.datamodules.collate.pad_images`): ``uint8`` pixels as the
  transform resized them, padding 0 (the ``blank_images`` control: float32 zeros, already model input);
- on the model's device, after the data module's ``on_after_batch_transfer``
  (:func:`~vlp.datamodules.normalise.normalise_batch`), which is what a task receives: float32, normalised
  with ViLT's mean = std = 0.5 (``x * 2/255 - 1``, in ``[-1, 1]``), padding ``0.0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass
class Targets:
    """Detection targets of one image: boxes as normalised ``cxcywh`` in [0, 1]."""

    boxes: Tensor  # [M, 4] float
    labels: Tensor  # [M] long, category index
    attributes: Tensor  # [M, A] float multi-hot over the attribute vocabulary

    def to(self, device: torch.device | str) -> Targets:
        return Targets(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class Batch:
    """One collated batch. ``keys`` identify the samples (webdataset ``__key__``)."""

    keys: list[str]
    pixels: Tensor | None = None  # [B, 3, H, W] each sample's own image: uint8 from a loader, float32
    # normalised once on the model's device (module docstring)
    pixel_mask: Tensor | None = None  # [B, H, W] bool, True = real pixel
    text_ids: Tensor | None = None  # [B, L] long, the text as written (never masked)
    text_mask: Tensor | None = None  # [B, L] bool, True = real token
    mlm_text_ids: Tensor | None = None  # [B, L] long, text_ids with the MLM masking applied
    mlm_labels: Tensor | None = None  # [B, L] long, original id at masked positions, -100 elsewhere
    itm_labels: Tensor | None = None  # [B] long, 1 = image and text match
    itm_image_index: Tensor | None = None  # [B] long, whose image sample i is shown with for ITM
    itm_text_ids: Tensor | None = (
        None  # [B, L'] long, the ITM view's text where it is not text_ids (caption-edit
    )
    # negatives read an edit of their caption; every other row its caption)
    itm_text_mask: Tensor | None = None  # [B, L'] bool
    targets: list[Targets] | None = None
    objects_annotated: list[bool] | None = None  # per sample with targets: False = its objects are not
    # annotated (no ``objects`` in its json; empty targets the detection loss and mAP skip), True = they are
    # (``objects: []`` included: an image with no object); None = every sample's are
    answers: Tensor | None = None  # [B, num_answers] float VQA soft scores
    pair_labels: Tensor | None = None  # [B] long, NLVR2-style statement truth
    text_image_index: Tensor | None = (
        None  # [T] long, image row each text row describes (T texts != B images)
    )
    pixels_right: Tensor | None = None  # second image of a pair sample, as ``pixels``
    pixel_mask_right: Tensor | None = None
    caption_ids: Tensor | None = None  # [B, T] long, decoder input/target captions
    caption_mask: Tensor | None = None  # [B, T] bool
    image_codes: Tensor | None = None  # [B, h*w] long, VQGAN code ids
    captions: list[str] | None = None  # raw text, for generation metrics
    references: list[list[str]] | None = None  # every caption of each sample (captioning metrics) or
    # the annotators' answers of each VQA row ([]: a test question), for the official VQA accuracy
    question_ids: list[int | None] | None = None  # each VQA row's dataset question id (VQAv2's)
    num_skipped: int = 0  # samples dropped while building this batch (corrupt / missing fields)
    skipped_keys: list[str] = field(default_factory=list)
    position: tuple[int, int, int] | None = (
        None  # (epoch, loader worker, batch index): where the stream resumes
    )

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> Batch:
        """Move every tensor (and target) to ``device``; Lightning calls this through ``transfer_batch_to_device``."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                moved[f.name] = value.to(device, non_blocking=True)
            elif isinstance(value, list) and value and isinstance(value[0], Targets):
                moved[f.name] = [t.to(device) for t in value]
        return replace(self, **moved)
