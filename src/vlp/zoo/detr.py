"""DETR's weights as the start of an E2E-VLP: the ResNet, the input projection, the decoder, the object
queries and the detection head.

Two source layouts, the same numbers:

- **official** (facebookresearch/detr's torch.hub files, ``detr-r50-e632da11.pth``; the state dict under
  ``"model"``): ``backbone.0.body.*`` (a torchvision ResNet with frozen BatchNorm: ``weight``, ``bias``,
  ``running_mean``, ``running_var``, no step counter), ``input_proj``, ``query_embed``,
  ``transformer.encoder.*``, ``transformer.decoder.layers.N.{self_attn, multihead_attn}`` (``nn.MultiheadAttention``:
  fused ``in_proj_weight`` / ``in_proj_bias`` and ``out_proj``), ``linear1``, ``linear2``, ``norm1..3``,
  ``transformer.decoder.norm``, ``class_embed``, ``bbox_embed.layers.{0,1,2}``.
- **hf** (the Hub files of ``transformers``' ``DetrForObjectDetection``, ``facebook/detr-resnet-50``):
  ``model.backbone.conv_encoder.model.*`` (timm's ResNet, the same names), ``model.input_projection``,
  ``model.query_position_embeddings``, ``model.encoder.*``, ``model.decoder.layers.N.{self_attn,
  encoder_attn}.{q_proj, k_proj, v_proj, out_proj}``, ``fc1``, ``fc2``, ``self_attn_layer_norm``,
  ``encoder_attn_layer_norm``, ``final_layer_norm``, ``model.decoder.layernorm``,
  ``class_labels_classifier``, ``bbox_predictor.layers.{0,1,2}``. (transformers 5 renames some modules in
  memory, ``o_proj`` and ``mlp.fc1``; ``save_pretrained`` writes the Hub names back.)

vlp keys are a task's (``init_from`` matches them by name): ``model.visual_embedder.backbone.*`` and
``model.visual_embedder.input_proj.*`` (a :class:`~vlp.models.embedders.cnn_grid.CNNGridEmbedder` with
the same timm ResNet and ``freeze_bn: true``, whose frozen BatchNorm has DETR's four buffers),
``model.query_embed.weight``, ``model.decoder.*`` (:class:`~vlp.models.layers.decoder.TransformerDecoder`,
fused ``qkv`` as ``nn.MultiheadAttention``'s ``in_proj``: q, k, v rows) and
``objectives.detection.head.*`` (:class:`~vlp.models.layers.heads.DetectionHead`: ``class_embed`` with
DETR's "no object" last, ``bbox_embed.{0,2,4}``). DETR's image encoder has no place in E2E-VLP, whose
encoder reads text and image together: its keys are dropped.

The weights are a part, not a model (``model_config`` is ``None``): a recipe's E2E-VLP must have DETR's
sizes where it takes them (width 256, 8 heads, 6 decoder layers, FFN 2048 = ``mlp_ratio: 8.0``,
LayerNorm eps 1e-5, 100 queries, the same ResNet), or ``init_from`` names the keys whose shapes differ,
and its decoder DETR's layer order and activation (``post_norm: true, activation: relu``): then the
backbone, the input projection, the sine positions, the decoder and the heads compute what DETR's do
(``tests/zoo/test_detr.py``). With vlp's default pre-norm GELU decoder the weights load but start it from
DETR's weights, not DETR's function.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import Tensor

from vlp.zoo.converted import ConversionReport, Converted
from vlp.zoo.keys import KeyMappingError, Link, import_state

VISUAL = "model.visual_embedder."
DECODER = "model.decoder."
HEAD = "objectives.detection.head."
QUERIES = "model.query_embed.weight"
OFFICIAL_BODY = "backbone.0.body."
HF_BODY = "model.backbone.conv_encoder.model."
OFFICIAL_ENCODER = "transformer.encoder."
HF_ENCODER = "model.encoder."
_AFFINE = ("weight", "bias")
_BATCH_NORM = "(?:weight|bias|running_mean|running_var)"
# A ResNet's parameters and frozen-BatchNorm buffers under torchvision's and timm's common names.
RESNET_KEY = re.compile(
    rf"conv1\.weight|bn1\.{_BATCH_NORM}"
    rf"|layer\d+\.\d+\.(?:conv\d\.weight|bn\d\.{_BATCH_NORM}|downsample\.0\.weight|downsample\.1\.{_BATCH_NORM})"
)
QKV_MERGED = "q_proj, k_proj, v_proj stacked along dim 0 (q, k, v rows, as nn.MultiheadAttention's in_proj)"
# vlp decoder-layer module -> official module, HF module (outside the attentions' projections)
_OFFICIAL_LAYER = {
    "mlp.fc1": "linear1",
    "mlp.fc2": "linear2",
    "norm1": "norm1",
    "norm2": "norm2",
    "norm3": "norm3",
}
_HF_LAYER = {
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
    "norm1": "self_attn_layer_norm",
    "norm2": "encoder_attn_layer_norm",
    "norm3": "final_layer_norm",
}
# transformers 5's in-memory module names, which its save_pretrained maps back to the Hub's
_HF_MEMORY_NAMES = re.compile(r"^model\.backbone\.model\.|\.o_proj\.|\.mlp\.fc[12]\.")


def _count(keys: Iterable[str], pattern: str) -> int:
    """1 + the largest index ``pattern``'s group captures in ``keys`` (0 when none matches)."""
    found = [int(m.group(1)) for key in keys if (m := re.match(pattern, key))]
    return max(found) + 1 if found else 0


def _backbone_links(state: Mapping[str, Tensor], body: str) -> list[Link]:
    """The ResNet under ``body``: ``conv1.weight`` is required (no backbone is an error); every other
    key with a ResNet name is renamed; keys under ``body`` with other names stay unmapped (an error)."""
    links = [Link(f"{VISUAL}backbone.conv1.weight", (f"{body}conv1.weight",))]
    for key in sorted(state):
        name = key[len(body) :]
        if key.startswith(body) and name != "conv1.weight" and RESNET_KEY.fullmatch(name):
            links.append(Link(f"{VISUAL}backbone.{name}", (key,)))
    return links


def _affine(ours: str, theirs: str) -> list[Link]:
    """``ours.weight`` ← ``theirs.weight``, ``ours.bias`` ← ``theirs.bias``."""
    return [Link(f"{ours}.{p}", (f"{theirs}.{p}",)) for p in _AFFINE]


def _decoder_depth(state: Mapping[str, Tensor], prefix: str, source: str) -> int:
    depth = _count(state, rf"{re.escape(prefix)}(\d+)\.")
    if depth == 0:
        raise KeyMappingError(f"{source}: no decoder layers ({prefix}N.*): not a DETR state dict")
    return depth


@dataclass(frozen=True)
class _Layout:
    """Where one source layout keeps each part vlp takes (prefixes and names in its state dict)."""

    body: str  # the ResNet
    input_proj: str
    queries: str
    decoder_norm: str
    class_embed: str
    bbox_layers: str  # the box MLP's layers, ``<bbox_layers>N.*``
    decoder_layers: str  # ``<decoder_layers>N.*``
    attentions: tuple[tuple[str, str], ...]  # (vlp attention, theirs) in a decoder layer
    qkv: tuple[str, ...]  # the source(s) of vlp's fused ``qkv.<p>``, filled with ``attn`` and ``p``
    layer: Mapping[str, str]  # vlp decoder-layer module -> theirs, outside the attentions


_OFFICIAL = _Layout(
    body=OFFICIAL_BODY,
    input_proj="input_proj",
    queries="query_embed.weight",
    decoder_norm="transformer.decoder.norm",
    class_embed="class_embed",
    bbox_layers="bbox_embed.layers.",
    decoder_layers="transformer.decoder.layers.",
    attentions=(("self_attn", "self_attn"), ("cross_attn", "multihead_attn")),
    qkv=("{attn}.in_proj_{p}",),
    layer=_OFFICIAL_LAYER,
)
_HF = _Layout(
    body=HF_BODY,
    input_proj="model.input_projection",
    queries="model.query_position_embeddings.weight",
    decoder_norm="model.decoder.layernorm",
    class_embed="class_labels_classifier",
    bbox_layers="bbox_predictor.layers.",
    decoder_layers="model.decoder.layers.",
    attentions=(("self_attn", "self_attn"), ("cross_attn", "encoder_attn")),
    qkv=tuple(f"{{attn}}.{x}_proj.{{p}}" for x in "qkv"),
    layer=_HF_LAYER,
)


def _links(state: Mapping[str, Tensor], layout: _Layout, source: str) -> list[Link]:
    """vlp ← ``layout``, for the decoder and box-MLP depths found in ``state``."""
    links = _backbone_links(state, layout.body)
    links += _affine(f"{VISUAL}input_proj", layout.input_proj)
    links.append(Link(QUERIES, (layout.queries,)))
    links += _affine(f"{DECODER}norm", layout.decoder_norm)
    links += _affine(f"{HEAD}class_embed", layout.class_embed)
    for i in range(_count(state, rf"{re.escape(layout.bbox_layers)}(\d+)\.")):
        links += _affine(f"{HEAD}bbox_embed.{2 * i}", f"{layout.bbox_layers}{i}")
    for n in range(_decoder_depth(state, layout.decoder_layers, source)):
        ours, theirs = f"{DECODER}layers.{n}.", f"{layout.decoder_layers}{n}."
        for attn, their_attn in layout.attentions:
            for p in _AFFINE:
                sources = tuple(name.format(attn=theirs + their_attn, p=p) for name in layout.qkv)
                links.append(Link(f"{ours}{attn}.qkv.{p}", sources))
            links += _affine(f"{ours}{attn}.proj", f"{theirs}{their_attn}.out_proj")
        for module, their_module in layout.layer.items():
            links += _affine(ours + module, theirs + their_module)
    return links


def official_links(state: Mapping[str, Tensor], source: str = "DETR") -> list[Link]:
    """vlp ← facebookresearch/detr, for the decoder and box-MLP depths found in ``state``."""
    return _links(state, _OFFICIAL, source)


def hf_links(state: Mapping[str, Tensor], source: str = "DETR") -> list[Link]:
    """vlp ← transformers' ``DetrForObjectDetection`` (Hub file names), for the depths in ``state``."""
    return _links(state, _HF, source)


def _convert(state: Mapping[str, Tensor], links: list[Link], encoder: str, source: str) -> Converted:
    """Import through ``links``; the image encoder's keys (under ``encoder``) are the only ones dropped."""
    dropped = sorted(key for key in state if key.startswith(encoder))
    out = import_state(state, links, source, unused=dropped)
    adapted = {link.ours: QKV_MERGED for link in links if len(link.theirs) > 1 and link.ours in out}
    report = ConversionReport(
        source=source,
        loaded=sorted(key for key in out if key not in adapted),
        adapted=adapted,
        dropped=dropped,
    )
    return Converted(state=out, model_config=None, report=report)


def convert_official(state: Mapping[str, Tensor], source: str) -> Converted:
    """facebookresearch/detr's state dict (the torch.hub file's ``"model"``) → E2E-VLP task keys.

    Raises:
        KeyMappingError: naming the keys no part of E2E-VLP takes or the keys DETR should have and lacks.
    """
    return _convert(state, official_links(state, source), OFFICIAL_ENCODER, source)


def convert_hf(state: Mapping[str, Tensor], source: str) -> Converted:
    """transformers' ``DetrForObjectDetection`` (its Hub ``model.safetensors``) → E2E-VLP task keys.

    Raises:
        KeyMappingError: naming the keys no part of E2E-VLP takes or the keys DETR should have and lacks;
            transformers 5's in-memory names (``state_dict()`` of a loaded model) are refused with how to
            get the Hub names.
    """
    in_memory = sorted(key for key in state if _HF_MEMORY_NAMES.search(key))
    if in_memory:
        raise KeyMappingError(
            f"{source}: keys in transformers 5's in-memory naming ({in_memory[:3]}, ...), not the Hub file's "
            "(model.backbone.conv_encoder.model.*, out_proj, fc1/fc2): save the model with "
            "save_pretrained and convert the model.safetensors it writes"
        )
    return _convert(state, hf_links(state, source), HF_ENCODER, source)
