"""timm classification weights as the start of a vlp model: a ViT for ViLT, a ResNet for the CNN grid.

- **ViT** (:func:`convert_vit`): a class-token timm ``VisionTransformer`` (the layout of
  ``vit_base_patch32_384``, ViLT's initialisation) → ViLT's visual embedder
  (:class:`~vlp.models.embedders.vit_patch.ViTPatchEmbedder`: patch projection, [CLS], positions) and
  its encoder (:class:`~vlp.models.layers.transformer.TransformerEncoder`: blocks and final norm).
  vlp's blocks use timm's names and timm's fused ``attn.qkv``, so every key is copied unchanged. ViLT
  adds the visual positions to the image tokens once, before the encoder, as timm's ``_pos_embed``
  does; with a LayerNorm eps of 1e-6 (timm's and vlp's default) ``encoder(embeds + pos)`` is timm's
  ``forward_features``. The classifier ``head.*`` is dropped and listed.
- **ResNet** (:func:`convert_resnet`): a timm ``ResNet`` → the backbone of
  :class:`~vlp.models.embedders.cnn_grid.CNNGridEmbedder`, timm's ``features_only`` model of the same
  architecture, whose keys are the classification model's for the modules it keeps (stem and stages up
  to the used one). ``fc.*`` and the stages beyond the used one are dropped and listed.

Both are parts (``model_config`` is ``None``): a recipe builds the rest and ``init_from`` matches these
keys by name. ViT positions are kept on the checkpoint's grid; :func:`interpolate_positions` resamples
them when a recipe's ``pos_grid`` differs. A key these converters neither map nor know to drop (layer
scale, register tokens, a pre-norm: parts vlp's modules do not have) fails, naming it, because dropping
it would change what the loaded modules compute.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping

from torch import Tensor

from vlp.zoo.converted import ConversionReport, Converted
from vlp.zoo.keys import KeyMappingError, Link, export_state, import_state

VIT_EMBEDDER = "model.visual_embedder."
VIT_ENCODER = "model.encoder."
CNN_BACKBONE = "model.visual_embedder.backbone."
# timm key (same name under the embedder) of the patch embedding, [CLS] and positions
_VIT_EMBEDDING = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed")
_VIT_BLOCK = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
VIT_DROPPED = ("head.*",)
RESNET_DROPPED = ("fc.*",)
_RESNET_STEM = ("conv1", "bn1")


def _blocks(state: Mapping[str, Tensor], pattern: str) -> int:
    """The number of blocks: one more than the largest index ``pattern``'s group matches."""
    indices = [int(m[1]) for key in state if (m := re.match(pattern, key))]
    return max(indices) + 1 if indices else 0


def _vit_links(depth: int) -> list[Link]:
    links = [Link(VIT_EMBEDDER + key, (key,)) for key in _VIT_EMBEDDING]
    for i in range(depth):
        for name in _VIT_BLOCK:
            for param in ("weight", "bias"):
                key = f"blocks.{i}.{name}.{param}"
                # a ViT built with qkv_bias=False has none (build vlp's encoder with qkv_bias=False too)
                links.append(Link(VIT_ENCODER + key, (key,), optional=name == "attn.qkv" and param == "bias"))
    links += [Link(VIT_ENCODER + f"norm.{param}", (f"norm.{param}",)) for param in ("weight", "bias")]
    return links


def _matching(keys: Mapping[str, Tensor], patterns: tuple[str, ...]) -> list[str]:
    return sorted(key for key in keys if any(fnmatch.fnmatchcase(key, p) for p in patterns))


def position_grid(pos: Tensor, source: str = "pos_embed") -> int:
    """The side of the square patch grid of a ``[1, 1 + grid², D]`` position table ([CLS] first)."""
    if pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[1] < 2:
        raise ValueError(f"{source}: expected positions [1, 1 + grid*grid, dim], got {tuple(pos.shape)}")
    grid = math.isqrt(pos.shape[1] - 1)
    if grid * grid != pos.shape[1] - 1:
        raise ValueError(
            f"{source}: {pos.shape[1]} positions are not [CLS] + a square grid (1 + grid*grid); "
            "vlp's ViTPatchEmbedder gives [CLS] a position and the patches a square table"
        )
    return grid


def convert_vit(state: Mapping[str, Tensor], source: str) -> Converted:
    """A timm ``VisionTransformer`` state dict → ViLT's ``model.visual_embedder.*`` and ``model.encoder.*``.

    Every key keeps its name under its vlp module (``attn.qkv`` is fused in both, so nothing is split
    or merged: ``report.adapted`` is empty); the positions stay on the checkpoint's grid (build the
    embedder with that ``pos_grid``, or resample with :func:`interpolate_positions`).

    Raises:
        KeyMappingError: naming the keys neither mapped nor in ``head.*``, or the ViT keys missing.
        ValueError: for positions that are not [CLS] + a square grid.
    """
    if "pos_embed" in state:
        position_grid(state["pos_embed"], f"{source}: pos_embed")
    dropped = _matching(state, VIT_DROPPED)
    depth = _blocks(state, r"blocks\.(\d+)\.")
    try:
        out = import_state(state, _vit_links(depth), source, unused=dropped)
    except KeyMappingError as error:
        raise KeyMappingError(
            f"{error}. timm-vit takes a class-token timm VisionTransformer laid out as "
            "vit_base_patch32_384 (patch_embed, cls_token, pos_embed, blocks.N.{norm1, attn.qkv, attn.proj, "
            "norm2, mlp.fc1, mlp.fc2}, norm, head); vlp's ViLT has no place for other parts"
        ) from error
    return Converted(out, None, ConversionReport(source, loaded=sorted(out), dropped=dropped))


def vit_to_timm(state: Mapping[str, Tensor], target: str = "timm VisionTransformer") -> dict[str, Tensor]:
    """The inverse of :func:`convert_vit`: ``model.visual_embedder.*`` and ``model.encoder.*`` of a
    ViLT (patch embedder and encoder only) → a timm ``VisionTransformer`` state dict without a head,
    which loads strictly into the timm model built with ``num_classes=0``.

    Raises:
        KeyMappingError: naming the keys timm's ViT has no place for (e.g. a pre-norm, the text
            embedder) or the ones it needs and ``state`` lacks.
    """
    depth = _blocks(state, re.escape(VIT_ENCODER) + r"blocks\.(\d+)\.")
    return export_state(state, _vit_links(depth), target)


def interpolate_positions(pos: Tensor, grid: int) -> Tensor:
    """A ``[1, 1 + g², D]`` position table resampled to ``[1, 1 + grid², D]``: the patch positions
    bicubically, the [CLS] position kept as it is. The same grid gives ``pos`` back unchanged.

    This is timm's ``resample_abs_pos_embed`` with its defaults (PyTorch's antialiased bicubic, PIL's
    kernel), which :meth:`~vlp.models.embedders.vit_patch.ViTPatchEmbedder.load_vit_embedding` uses
    too: both ways of starting from a timm ViT give the same table."""
    from timm.layers import resample_abs_pos_embed

    if grid < 1:
        raise ValueError(f"grid must be a positive number of patches per side, got {grid}")
    position_grid(pos)
    return resample_abs_pos_embed(pos, new_size=[grid, grid], num_prefix_tokens=1)


def _resnet_stages(state: Mapping[str, Tensor]) -> int:
    return max((int(m[1]) for key in state if (m := re.match(r"layer(\d+)\.", key))), default=0)


def convert_resnet(state: Mapping[str, Tensor], source: str, out_index: int = -1) -> Converted:
    """A timm ``ResNet`` state dict → ``model.visual_embedder.backbone.*`` of a
    :class:`~vlp.models.embedders.cnn_grid.CNNGridEmbedder` with that ``backbone`` and ``out_index``.

    timm's features-only ResNet keeps the stem (``conv1``, ``bn1``) and the stages up to the feature
    level ``out_index`` (0: the stem, ``i``: ``layer<i>``; negative counts from the last, ``-1`` is the
    last stage), under the classification model's key names. ``fc.*`` and later stages are dropped.

    Raises:
        ValueError: for an ``out_index`` the ResNet does not have.
        KeyMappingError: naming keys outside the stem, the stages and ``fc``.
    """
    stages = _resnet_stages(state)
    levels = stages + 1  # the stem, then one level per stage
    if not -levels <= out_index < levels:
        raise ValueError(
            f"{source}: out_index {out_index} is not a feature level of this ResNet "
            f"({levels} levels: the stem and {stages} stages; -1 is the last)"
        )
    used = out_index % levels
    kept = {*_RESNET_STEM, *(f"layer{i}" for i in range(1, used + 1))}
    dropped_modules = {"fc", *(f"layer{i}" for i in range(used + 1, stages + 1))}
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        module = key.split(".", 1)[0]
        if module in kept:
            out[CNN_BACKBONE + key] = value
        elif module in dropped_modules:
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise KeyMappingError(
            f"{source}: unmapped keys {sorted(unknown)[:20]}; timm-resnet takes a timm ResNet "
            "(conv1, bn1, layer1.., fc): the features-only backbone has no place for other parts"
        )
    missing = [name for name in sorted(kept) if not any(k.split(".", 1)[0] == name for k in state)]
    if missing:
        raise KeyMappingError(f"{source}: missing the ResNet modules {missing}")
    return Converted(out, None, ConversionReport(source, loaded=sorted(out), dropped=sorted(dropped)))


def backbone_state(converted: Converted) -> dict[str, Tensor]:
    """The converted ResNet keys without the ``model.visual_embedder.backbone.`` prefix: what
    ``CNNGridEmbedder.backbone.load_state_dict`` takes."""
    return {
        key[len(CNN_BACKBONE) :]: value
        for key, value in converted.state.items()
        if key.startswith(CNN_BACKBONE)
    }
