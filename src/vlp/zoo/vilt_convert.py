"""The registry's ViLT converters, and what the official and Hugging Face layouts cannot hold.

:func:`convert_official` and :func:`convert_hf` wrap :func:`~vlp.zoo.vilt.official_to_vlp` and
:func:`~vlp.zoo.vilt.hf_to_vlp` in the zoo contract (:class:`~vlp.zoo.converted.Converted`): the weights in
a vlp task's key layout, the ``class_path`` / ``init_args`` of the :class:`~vlp.models.vilt.ViLT` they load
into strictly (:func:`vilt_model_config`, every size read from the tensors), and a report.

The attention head count is the one size no tensor shape tells. Every official and Hugging Face ViLT in
the registry is ViLT-B/32, which has 12 (:data:`VILT_B32_HEADS`); a ViLT of another head count converts
through :mod:`vlp.zoo.vilt_build` with the count given.

Both converters fail on a key they do not know (naming it), so their reports never drop anything: every
source key is loaded unchanged, adapted (named with how), or, for BERT's ``position_ids`` /
``token_type_ids`` buffers, checked to hold the defaults that vlp's ``TextEmbedder`` computes and so
stored nowhere.

:func:`check_exportable` is the other direction's gate: the parts of a vlp ViLT the official and Hugging
Face layouts have no place for, named before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import ViltConfig

from vlp.errors import UserError
from vlp.zoo.converted import ConversionReport, Converted
from vlp.zoo.vilt import ViLTWeights, hf_to_vlp, official_to_vlp
from vlp.zoo.vilt_build import OFFICIAL_ENCODER_NORM_EPS, config_from_weights
from vlp.zoo.vilt_build import _side as square_side  # vilt_from_config's check of a square size

VILT_B32_HEADS = 12
VILT_CLASS = "vlp.models.vilt.ViLT"
TEXT_CLASS = "vlp.models.embedders.text.TextEmbedder"
PATCH_CLASS = "vlp.models.embedders.ViTPatchEmbedder"
ENCODER_CLASS = "vlp.models.layers.transformer.TransformerEncoder"
# the keys of a ViTPatchEmbedder without pre_norm: all the official and HF layouts have for the image
PATCH_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed")
LAYOUT_NAMES = {"hf": "Hugging Face", "official": "official ViLT"}
_QKV = re.compile(r"model\.encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")


def vilt_model_config(
    config: ViltConfig, encoder_norm_eps: float | None = None, sample_at_eval: bool | None = None
) -> dict[str, Any]:
    """The ``class_path`` / ``init_args`` of the ViLT :func:`~vlp.zoo.vilt_build.vilt_from_config` builds
    from ``config`` (the same arguments, in jsonargparse's form, as a recipe's ``model``)."""
    if config.hidden_act != "gelu":
        raise ValueError(
            f"ViltConfig.hidden_act={config.hidden_act!r}: vlp's blocks and heads use exact 'gelu'"
        )
    dim = config.hidden_size
    patch = square_side(config.patch_size, "patch_size")
    image = square_side(config.image_size, "image_size")
    return {
        "class_path": VILT_CLASS,
        "init_args": {
            "text_embedder": {
                "class_path": TEXT_CLASS,
                "init_args": {
                    "vocab_size": config.vocab_size,
                    "dim": dim,
                    "max_len": config.max_position_embeddings,
                    "type_vocab_size": config.type_vocab_size,
                    "pad_id": config.pad_token_id if config.pad_token_id is not None else 0,
                    "dropout": config.hidden_dropout_prob,
                    "norm_eps": config.layer_norm_eps,
                },
            },
            "visual_embedder": {
                "class_path": PATCH_CLASS,
                "init_args": {
                    "dim": dim,
                    "patch_size": patch,
                    "pos_grid": image // patch,
                    "max_image_len": config.max_image_length,
                    "sample_at_eval": config.max_image_length > 0
                    if sample_at_eval is None
                    else sample_at_eval,
                    "in_chans": config.num_channels,
                },
            },
            "encoder": {
                "class_path": ENCODER_CLASS,
                "init_args": {
                    "dim": dim,
                    "depth": config.num_hidden_layers,
                    "num_heads": config.num_attention_heads,
                    "mlp_ratio": config.intermediate_size / dim,
                    "qkv_bias": config.qkv_bias,
                    "drop": config.hidden_dropout_prob,
                    "attn_drop": config.attention_probs_dropout_prob,
                    "norm_eps": config.layer_norm_eps if encoder_norm_eps is None else encoder_norm_eps,
                },
            },
            "num_modality_types": config.modality_type_vocab_size,
        },
    }


def _converted(
    weights: ViLTWeights, source: str, adapted: dict[str, str], encoder_norm_eps: float | None
) -> Converted:
    """Task-layout state, the ViLT-B/32 model config of these weights (all patches, no sampling: the
    same tokens in training and eval mode) and the report."""
    state = weights.task_state_dict()
    config = config_from_weights(weights, VILT_B32_HEADS, layer_norm_eps=1e-12, max_image_length=-1)
    if config.hidden_size % VILT_B32_HEADS:
        raise ValueError(
            f"{source}: width {config.hidden_size} does not split into ViLT-B/32's {VILT_B32_HEADS} "
            "attention heads; this is not a ViLT-B/32 (convert it with vlp.zoo.vilt_build and its head count)"
        )
    adapted = {key: how for key, how in adapted.items() if key in state}
    report = ConversionReport(
        source=source, loaded=[key for key in state if key not in adapted], adapted=adapted, dropped=[]
    )
    return Converted(state, vilt_model_config(config, encoder_norm_eps=encoder_norm_eps), report)


def convert_official(state: Mapping[str, Tensor], source: str) -> Converted:
    """An official ViLT state dict (``dandelin/ViLT``'s Lightning ``.ckpt``) → vlp.

    The model config has official ViLT's LayerNorm eps: 1e-6 in the encoder (timm's ViT blocks), 1e-12 in
    the text embeddings and the MLM head (BERT's); 12 attention heads (:data:`VILT_B32_HEADS`). The fused
    ``attn.qkv`` is vlp's own layout: every tensor loads unchanged.
    """
    weights = official_to_vlp(state, source=source)
    return _converted(weights, source, {}, OFFICIAL_ENCODER_NORM_EPS)


def convert_hf(state: Mapping[str, Tensor], source: str) -> Converted:
    """A ``transformers`` ViLT state dict (``ViltModel`` or a ``ViltFor*`` class) → vlp.

    Adapted: each block's ``query`` / ``key`` / ``value`` concatenated into ``attn.qkv``; an MLM decoder the
    file leaves out (transformers ties it to the word embeddings) taken from the word embeddings; the
    decoder bias transformers 4.x saved under a second name (``mlm_score.bias``, checked equal). Every
    LayerNorm eps is 1e-12 (``ViltConfig``'s), 12 attention heads (:data:`VILT_B32_HEADS`).
    """
    weights = hf_to_vlp(state, source=source)
    prefix = "vilt." if any(k.startswith("vilt.") for k in state) else ""
    adapted = {}
    for key in weights.task_state_dict():
        match = _QKV.fullmatch(key)
        if match:
            layer = f"{prefix}encoder.layer.{match[1]}.attention.attention"
            adapted[key] = f"{layer}.{{query,key,value}}.{match[2]} concatenated along dim 0"
    if "mlm" in weights.heads:
        if "mlm_score.decoder.weight" not in state:
            adapted["objectives.mlm.head.decoder.weight"] = (
                "not in the file (tied): the word embeddings, as transformers ties them"
            )
        if "mlm_score.bias" in state:
            source_key = "mlm_score.decoder.bias" if "mlm_score.decoder.bias" in state else "mlm_score.bias"
            adapted["objectives.mlm.head.bias"] = (
                f"{source_key} (transformers 4.x's two names of the decoder bias, checked equal)"
            )
    return _converted(weights, source, adapted, None)


# ------------------------------------------------------------------------------------------ export


def _visual_class(model_config: Mapping[str, Any] | None) -> str | None:
    visual = ((model_config or {}).get("init_args") or {}).get("visual_embedder")
    return visual.get("class_path") if isinstance(visual, Mapping) else None


def _is_patch_embedder(class_path: str) -> bool:
    import pydoc

    from vlp.models.embedders.vit_patch import ViTPatchEmbedder

    cls = pydoc.locate(class_path)
    return isinstance(cls, type) and issubclass(cls, ViTPatchEmbedder)


def export_problems(
    weights: ViLTWeights,
    layout: str,
    model_config: Mapping[str, Any] | None = None,
    num_heads: int | None = None,
) -> list[str]:
    """What of this vlp ViLT the ``layout`` (``"hf"`` or ``"official"``) cannot represent, one sentence each.

    Both layouts hold a ViLT with a plain ViT patch embedder: no ``pre_norm`` LayerNorm on the patch tokens
    (the shapes recipes set it), no CNN grid or VQ tokens. Hugging Face's ``ViltForMaskedLM`` also ties the
    MLM decoder to the word embeddings (official ViLT keeps its own decoder). The width must split into the
    attention heads, where the head count is known.
    """
    problems = []
    name = LAYOUT_NAMES.get(layout, layout)
    model_class = (model_config or {}).get("class_path")
    if model_class is not None and model_class.rsplit(".", 1)[-1] != "ViLT":
        problems.append(f"the model is a {model_class}, not a vlp.models.vilt.ViLT")
    visual_class = _visual_class(model_config)
    visual = sorted(key for key in weights.model if key.startswith("visual_embedder."))
    norm_pre = [key for key in visual if key.startswith("visual_embedder.norm_pre.")]
    other = [
        key for key in visual if key[len("visual_embedder.") :] not in PATCH_KEYS and key not in norm_pre
    ]
    if (visual_class is not None and not _is_patch_embedder(visual_class)) or other:
        what = visual_class or "not a ViTPatchEmbedder"
        keys = f" (keys {', '.join('model.' + k for k in other[:4])}{', ...' if len(other) > 4 else ''})"
        problems.append(
            f"model.visual_embedder is {what}{keys if other else ''}: the {name} layout embeds images with "
            "a ViT patch projection only (vlp.models.embedders.ViTPatchEmbedder)"
        )
    if norm_pre:
        problems.append(
            f"model.visual_embedder.norm_pre ({', '.join('model.' + k for k in norm_pre)}): the "
            "ViTPatchEmbedder's pre_norm LayerNorm (pre_norm: true, as in the shapes recipes) has no place in "
            f"the {name} layout, whose patch tokens enter the encoder without one"
        )
    decoder = weights.heads.get("mlm", {}).get("decoder.weight")
    words = weights.model.get("text_embedder.word_embeddings.weight")
    tied = decoder is None or words is None or torch.equal(decoder, words)  # (equal also needs a shape)
    if layout == "hf" and not tied:
        problems.append(
            "objectives.mlm.head.decoder.weight is not tied to the word embeddings, and transformers' "
            "ViltForMaskedLM ties them: export without the MLM head (--heads) or tie them first"
        )
    width = words.shape[1] if words is not None else None
    if num_heads is not None and width is not None and width % num_heads:
        problems.append(f"the width {width} does not split into {num_heads} attention heads")
    return problems


def check_exportable(
    weights: ViLTWeights,
    layout: str,
    source: str,
    model_config: Mapping[str, Any] | None = None,
    num_heads: int | None = None,
) -> None:
    """Raise a :class:`~vlp.errors.UserError` naming every part :func:`export_problems` finds."""
    problems = export_problems(weights, layout, model_config, num_heads)
    if problems:
        raise UserError(
            f"{source} cannot be exported to the {LAYOUT_NAMES.get(layout, layout)} layout: "
            + "; ".join(problems)
        )
