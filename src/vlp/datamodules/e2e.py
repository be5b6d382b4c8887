"""E2E-VLP batches: the pre-training views (MLM, ITM) plus detection targets and caption tokens.

Two parts of a :class:`~vlp.datamodules.shards.ShardDataModule` serve the three E2E-VLP recipes, switched
by flags: joint pre-training (MLM + ITM + detection + captioning), captioning fine-tuning (captions only)
and detection with paired text (a caption + boxes). With detection the decoder is an
:class:`ObjectDecoder` and the :class:`E2ECollator` puts its ``targets`` in the batch; without, a
:class:`~vlp.datamodules.decode.SampleDecoder` serves. Detection targets are parsed in the loader
workers, where a bad object skips its sample (counted, with the reason naming the field) like any
other bad sample:

* ``objects[i].bbox`` ``[x, y, w, h]`` in pixels of the stored image → normalised ``cxcywh`` in
  ``[0, 1]`` (the transform resizes the whole image without cropping, so normalised boxes hold for the
  resized image too; padding is added on the right and bottom and masked);
* ``objects[i].category`` → its index in ``vocab.json``'s ``categories``;
* ``objects[i].attributes`` → a multi-hot row over ``vocab.json``'s ``attributes``.

A sample whose json has no ``objects`` (or ``"objects": null``) is *not annotated*: captions-only data
mixed in, such as COCO converted without its instances when the boxes are another dataset's classes. Its
targets are empty and ``Batch.objects_annotated`` marks it ``False``, so the detection loss and mAP skip
it. ``"objects": []`` is an annotated image with no object: every query learns "no object" on it.

Caption tokens are the chosen caption's tokenization, ``[CLS] w1 .. wn [SEP]``: the tokenizer's
``[CLS]`` is the decoder's BOS and ``[SEP]`` its EOS (what :meth:`~vlp.models.e2e_vlp.model.E2EVLP.generate_captions`
is given), padding ``[PAD] = 0`` is masked. ``Batch.references`` holds every caption of each sample,
for the captioning metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from vlp.batch import Batch, Targets
from vlp.datamodules.collate import PretrainCollator
from vlp.datamodules.decode import DecodedSample, SampleDecoder, Unusable
from vlp.datamodules.parts import Decoder, Vocab


@dataclass
class ObjectSample(DecodedSample):
    """A decoded sample with its detection targets; ``annotated=False``: its json has no ``objects``
    (the targets are empty and are not to be supervised)."""

    targets: Targets | None = None
    annotated: bool = True


def parse_objects(
    objects: Any, image_size: tuple[int, int], categories: dict[str, int], attributes: dict[str, int]
) -> Targets:
    """``objects`` of a sample's json → :class:`Targets`; a ``ValueError`` naming the bad field.

    ``image_size`` is ``(height, width)`` of the stored image, the pixels ``bbox`` is given in. Boxes
    are clipped to the image; one with no area left is an error.
    """
    if objects is None:
        objects = []
    if not isinstance(objects, list):
        raise ValueError(f"objects must be a list, got {type(objects).__name__}")
    height, width = image_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image size {image_size} has no pixels")
    boxes, labels = [], []
    multi_hot = torch.zeros(len(objects), len(attributes))
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise ValueError(f"objects[{i}] must be an object, got {type(obj).__name__}")
        bbox = obj.get("bbox")
        if (
            not isinstance(bbox, list | tuple)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        ):
            raise ValueError(f"objects[{i}].bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"objects[{i}].bbox {bbox} has no area inside the {width}x{height} image")
        boxes.append([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height])
        category = obj.get("category")
        if category not in categories:
            raise ValueError(f"objects[{i}].category {category!r} is not in vocab.json's categories")
        labels.append(categories[category])
        names = obj.get("attributes", [])
        if not isinstance(names, list):
            raise ValueError(f"objects[{i}].attributes must be a list, got {type(names).__name__}")
        for name in names:
            if name not in attributes:
                raise ValueError(f"objects[{i}].attributes: {name!r} is not in vocab.json's attributes")
            multi_hot[i, attributes[name]] = 1.0
    return Targets(
        boxes=torch.tensor(boxes, dtype=torch.float).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.long),
        attributes=multi_hot,
    )


class ObjectDecoder(SampleDecoder):
    """:class:`~vlp.datamodules.decode.SampleDecoder` that also parses the json's ``objects``, over the
    ``categories`` (required) and ``attributes`` lists of the dataset's ``vocab.json``."""

    def __init__(self) -> None:
        super().__init__()
        self.categories: dict[str, int] = {}
        self.attributes: dict[str, int] = {}

    def use_vocab(self, vocab: Vocab) -> None:
        categories = vocab.words("categories", needed_for="detection classifies over it")
        self.categories = {name: i for i, name in enumerate(categories)}
        self.attributes = {name: i for i, name in enumerate(vocab.words("attributes"))}

    def decode(self, key: str, sample: dict[str, Any]) -> ObjectSample:
        decoded = super().decode(key, sample)
        objects = decoded.annotation.get("objects")
        try:
            targets = parse_objects(
                [] if objects is None else objects, decoded.orig_size, self.categories, self.attributes
            )
        except ValueError as exn:
            raise Unusable(str(exn)) from None
        return ObjectSample(**vars(decoded), targets=targets, annotated=objects is not None)


class E2ECollator(PretrainCollator):
    """:class:`~vlp.datamodules.collate.PretrainCollator` plus, per flag, detection ``targets`` and the
    chosen caption as decoder tokens (``caption_ids``/``caption_mask``, the same tokens as ``text_ids``).
    ``references`` always carries every caption of each sample. With ``targets``,
    ``objects_annotated`` says which samples' objects are annotated (see the module's docstring).

    Args:
        targets: put each sample's :class:`Targets` in the batch (detection: the decoder must be an
            :class:`ObjectDecoder`).
        captions: put the caption tokens in the batch (captioning).
        shuffle_images: the blind control: every image is replaced by another sample's of the batch, so
            image and text (and boxes) are unrelated. By default in training only, as in pre-training.
        shuffle_eval_images: with ``shuffle_images``, validation and test images are replaced too (the
            captioning control: captions are generated from another sample's image and scored against
            the sample's own references).
        mlm_probability, itm: the encoder views; ``0`` / ``False`` for fine-tuning.
        Others: as :class:`~vlp.datamodules.collate.PretrainCollator`.
    """

    def __init__(
        self, targets: bool = True, captions: bool = True, shuffle_eval_images: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if shuffle_eval_images and not self.shuffle_images:
            raise ValueError("shuffle_eval_images=True needs shuffle_images=True (it extends that control)")
        self.targets = targets
        self.captions = captions
        self.shuffle_eval_images = shuffle_eval_images

    def decoder_type(self) -> type[Decoder]:
        return ObjectDecoder if self.targets else SampleDecoder

    def shuffles(self, train: bool) -> bool:
        return self.shuffle_images and (train or self.shuffle_eval_images)

    def collate(self, samples: list[DecodedSample], generator: torch.Generator) -> Batch:
        batch = super().collate(samples, generator)
        targets, annotated = None, None
        if self.targets:
            missing = [s.key for s in samples if getattr(s, "targets", None) is None]
            if missing:
                raise ValueError(
                    f"samples {missing[:5]} carry no detection targets: decode them with ObjectDecoder"
                )
            targets = [s.targets for s in samples]
            annotated = [getattr(s, "annotated", True) for s in samples]
        return replace(
            batch,
            targets=targets,
            objects_annotated=annotated,
            caption_ids=batch.text_ids if self.captions else None,
            caption_mask=batch.text_mask if self.captions else None,
            references=[list(s.captions) for s in samples],
        )
