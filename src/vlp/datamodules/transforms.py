"""Image transforms as ViLT's: shorter side to ``image_size``, longer side capped, sides floored to patches.

ViLT (``pixelbert_transform``) resizes so the shorter side is ``image_size`` and the longer side is at
most ``image_size * 1333 / 800``, then floors both sides to a multiple of the patch size and resizes
straight to that size (no crop), so every pixel of the scene stays in view and the image tiles into
whole patches. The resize is torchvision's antialiased bicubic on ``uint8`` tensors: PIL's filter at a
third of PIL's cost, its pixels within two levels in 255 of PIL's (the two passes round differently).
Images stay ``uint8`` through the transform and the collator; ViLT's normalisation (mean = std = 0.5, as
floats) is applied to the whole batch once it is on the model's device
(:func:`~vlp.datamodules.normalise.normalise_batch`, the data module's ``on_after_batch_transfer``).

RandAugment follows ViLT's too: two ops per image, magnitude 9 on its 0-30 scale, each op always
applied, without colour inversion and cutout. It runs on the decoded image before resizing, as in ViLT.
Several of its ops change colours (contrast, brightness, solarize, posterize, equalize, ...), so a
caption or attribute naming a colour can stop being true: recipes whose labels name colours (shapes)
keep ``randaugment`` off.
"""

from __future__ import annotations

import torch
from PIL import Image
from timm.data.auto_augment import RandAugment, rand_augment_ops
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

VILT_MEAN = (0.5, 0.5, 0.5)
VILT_STD = (0.5, 0.5, 0.5)
LONG_SIDE_RATIO = 1333 / 800

RANDAUGMENT_NUM_OPS = 2
RANDAUGMENT_MAGNITUDE = 9
"""ViLT's magnitude, on the 0-30 scale of the RandAugment implementation ViLT copied."""
VILT_MAGNITUDE_SCALE = 30
TIMM_MAGNITUDE_SCALE = 10

RANDAUGMENT_OPS = (
    "AutoContrast",
    "Equalize",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
"""ViLT's op list: timm's RandAugment list without ``Invert`` (timm's list has no cutout).

Translation is relative to the image size (timm's ``*Rel`` ops) instead of ViLT's absolute pixels, so a
small image is not shifted out of frame.
"""

COLOUR_CHANGING_OPS = frozenset(
    {"AutoContrast", "Equalize", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness"}
)
"""Ops among :data:`RANDAUGMENT_OPS` that can make a colour word in a caption or label false."""


def long_side_cap(image_size: int) -> int:
    """ViLT's cap on the longer side: ``image_size * 1333 / 800``, truncated."""
    return int(image_size * LONG_SIDE_RATIO)


def resized_shape(height: int, width: int, image_size: int, patch_size: int) -> tuple[int, int]:
    """``(height, width)`` after ViLT's resize (``MinMaxResize``), both sides multiples of ``patch_size``.

    The shorter side becomes ``image_size`` unless that would push the longer side past the cap, in which
    case the longer side becomes the cap. Sides are rounded to the nearest pixel, then floored to a
    multiple of the patch size (never below one patch).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels: {height}x{width}")
    scale = image_size / min(height, width)
    new_h, new_w = height * scale, width * scale
    cap = long_side_cap(image_size)
    if max(new_h, new_w) > cap:
        shrink = cap / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return _floor_to_patch(int(new_h + 0.5), patch_size), _floor_to_patch(int(new_w + 0.5), patch_size)


def shorter_side_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """``(height, width)`` scaled so the shorter side is ``side`` (rounded, neither below ``side``)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels: {height}x{width}")
    scale = side / min(height, width)
    return max(side, int(height * scale + 0.5)), max(side, int(width * scale + 0.5))


def _floor_to_patch(side: int, patch_size: int) -> int:
    return max(patch_size, side // patch_size * patch_size)


def vilt_randaugment() -> RandAugment:
    """timm's RandAugment configured as ViLT's: 2 ops, magnitude 9 of 30, always applied, no Invert.

    timm measures magnitude on a 0-10 scale where ViLT's implementation uses 0-30, so ViLT's 9 is timm's 3.
    """
    magnitude = RANDAUGMENT_MAGNITUDE * TIMM_MAGNITUDE_SCALE / VILT_MAGNITUDE_SCALE
    hparams = {"translate_pct": 0.45, "img_mean": (128, 128, 128), "interpolation": Image.Resampling.BICUBIC}
    ops = rand_augment_ops(magnitude=magnitude, prob=1.0, hparams=hparams, transforms=list(RANDAUGMENT_OPS))
    return RandAugment(ops, num_layers=RANDAUGMENT_NUM_OPS)


class ViltTransform:
    """Image -> ``uint8`` tensor ``[3, H, W]``, resized as ViLT (normalised later, on the batch's device:
    :func:`~vlp.datamodules.normalise.normalise_batch`).

    Takes a ``uint8 [3, h, w]`` RGB tensor (what :func:`~vlp.datamodules.decode.decode_pixels` gives) or a
    PIL image of any mode PIL converts to RGB. RandAugment (timm's, on PIL images) converts a tensor to a
    PIL image first; without it PIL is not used.

    Picklable, so it runs inside DataLoader workers. RandAugment draws from Python's and NumPy's global
    generators, which the stream seeds per sample from the sample's coordinates
    (:mod:`vlp.datamodules.stream`). As a data module's ``transform`` part, :meth:`for_split` gives the
    transform of a split: RandAugment in training only.

    ``center_crop``: instead of ViLT's resize, the shorter side to ``image_size`` and the centre
    ``image_size`` x ``image_size`` square cut out (the square input of the VQGAN image tokenizers, as
    taming-transformers and DALL-E prepare images). Only for tasks that read no boxes: detection targets
    describe the whole image.
    """

    def __init__(
        self,
        image_size: int = 384,
        patch_size: int = 32,
        randaugment: bool = False,
        center_crop: bool = False,
    ) -> None:
        if image_size < patch_size:
            raise ValueError(f"image_size {image_size} is smaller than one patch ({patch_size})")
        self.image_size = image_size
        self.patch_size = patch_size
        self.randaugment = vilt_randaugment() if randaugment else None
        self.center_crop = center_crop

    def for_split(self, train: bool) -> ViltTransform:
        """The transform of a training split (``train``) or an evaluation one, which never augments."""
        return ViltTransform(
            self.image_size,
            self.patch_size,
            randaugment=train and self.randaugment is not None,
            center_crop=self.center_crop,
        )

    def __call__(self, image: Image.Image | Tensor) -> Tensor:
        pixels = self._augmented(image)
        height, width = pixels.shape[-2:]
        if self.center_crop:
            size = shorter_side_shape(height, width, self.image_size)
        else:
            size = resized_shape(height, width, self.image_size, self.patch_size)
        pixels = F.resize(pixels, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        if self.center_crop:
            pixels = F.center_crop(pixels, [self.image_size, self.image_size])
        return pixels

    def _augmented(self, image: Image.Image | Tensor) -> Tensor:
        """``uint8 [3, h, w]`` of the image, RandAugment applied when it is on."""
        if isinstance(image, Tensor):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"ViltTransform takes a uint8 [3, H, W] RGB tensor, got {image.dtype} {list(image.shape)}"
                )
            if self.randaugment is None:
                return image
            image = F.to_pil_image(image)
        image = image.convert("RGB")
        if self.randaugment is not None:
            image = self.randaugment(image)
        return F.pil_to_tensor(image)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, patch_size={self.patch_size}, "
            f"randaugment={self.randaugment is not None}, center_crop={self.center_crop})"
        )
