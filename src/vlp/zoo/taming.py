"""taming-transformers' VQGAN checkpoints (``VQModel``, ``GumbelVQ``) ↔ vlp's :class:`~vlp.models.vqgan.model.VQGAN`.

vlp's VQGAN is built as taming's ``Encoder`` / ``Decoder`` (``taming/modules/diffusionmodules/model.py``):
GroupNorm with 32 groups and eps 1e-6, swish, ResNet blocks with a 1x1 ``nin_shortcut`` where the width
changes, single-head attention with scale ``1/sqrt(C)``, stride-2 3x3 downsampling after padding right
and bottom by one, nearest x2 upsampling then a 3x3 conv, and the same mid block (ResNet, attention,
ResNet); the module tree has taming's names. So the autoencoder's keys carry over unchanged and every
size is read from their shapes:

* ``ch``, ``in_channels``: ``encoder.conv_in.weight``; levels and ``ch_mult``: the first block of each
  ``encoder.down.<i>``; ``num_res_blocks``: the blocks of ``encoder.down.0``; attention levels: the
  levels with ``attn`` blocks (the same in encoder and decoder); ``z_channels``: ``quant_conv``'s input;
  ``num_codes`` x ``code_dim``: the codebook; ``out_channels``: ``decoder.conv_out.weight``.
* ``resolution`` is the one size no shape holds: it only turns the attention levels into
  ``attn_resolutions`` (``resolution / 2**level``). The published models were trained at 256.

``VQModel`` (``convert_vq``) keeps its codebook at ``quantize.embedding.weight``; ``GumbelVQ``
(``convert_gumbel``) has ``quantize.proj`` (a 1x1 conv to the code logits) and ``quantize.embed.weight``,
which becomes vlp's ``quantize.embedding.weight`` (reported as adapted). Both checkpoints hold their loss
under ``loss.*`` (LPIPS's VGG and linear layers, the PatchGAN discriminator): dropped and listed.

What vlp's VQGAN cannot represent fails, naming it: ``double_z`` (an encoder that outputs twice
``z_channels``), average-pool downsampling (``resamp_with_conv=False``), 3x3 ResNet shortcuts
(``conv_shortcut=True``), timestep embeddings, a remapped codebook (``remap``), attention on different
levels in encoder and decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from vlp.models.vqgan.model import VQGAN
from vlp.zoo.converted import ConversionReport, Converted
from vlp.zoo.keys import KeyMappingError, Link, export_state, import_state

VQGAN_CLASS = "vlp.models.vqgan.model.VQGAN"
LOSS_PREFIX = "loss."
TAMING_NORM_GROUPS = 32  # taming's Normalize: GroupNorm(32, eps=1e-6)
PUBLISHED_RESOLUTION = 256
CODEBOOK = "quantize.embedding.weight"
GUMBEL_CODEBOOK = "quantize.embed.weight"
EMA_STATISTICS = (
    "quantize.cluster_size",
    "quantize.embed_avg",
)  # vlp's EMA codebook; taming's VQModel has none

# source-key fragments of taming options vlp's VQGAN has no counterpart for
_UNREPRESENTABLE = {
    ".conv_shortcut.": "ResnetBlock(conv_shortcut=True): a 3x3 shortcut conv; vlp's blocks have a 1x1 nin_shortcut",
    ".temb_proj.": "timestep-embedding projections (temb_channels > 0); vlp's VQGAN has no timestep input",
    "quantize.used": "a remapped codebook (quantizer remap=...); vlp's code ids are the codebook rows",
}


def convert_vq(
    state: Mapping[str, Tensor], source: str, *, resolution: int = PUBLISHED_RESOLUTION
) -> Converted:
    """taming ``VQModel`` state dict → vlp ``model.*`` keys of a :class:`VQGAN` (vector quantizer)."""
    return _convert(state, source, gumbel=False, resolution=resolution)


def convert_gumbel(
    state: Mapping[str, Tensor], source: str, *, resolution: int = PUBLISHED_RESOLUTION
) -> Converted:
    """taming ``GumbelVQ`` state dict → vlp ``model.*`` keys of a :class:`VQGAN` with ``quantizer="gumbel"``."""
    return _convert(state, source, gumbel=True, resolution=resolution)


def to_taming(state: Mapping[str, Tensor], model_config: Mapping[str, Any]) -> dict[str, Tensor]:
    """vlp ``model.*`` weights of the VQGAN ``model_config`` describes → taming's autoencoder keys
    (``VQModel``, or ``GumbelVQ`` with ``quantizer: gumbel``), without the loss taming keeps beside them.

    Raises:
        KeyMappingError: naming the keys taming has no place for (an EMA codebook's statistics) or the
            ones ``state`` lacks.
    """
    init_args = dict(model_config["init_args"])
    gumbel = init_args.get("quantizer", "vector") == "gumbel"
    own = _meta_model(init_args).state_dict()
    links = [Link(f"model.{key}", (_taming_key(key, gumbel),)) for key in own if key not in EMA_STATISTICS]
    return export_state(state, links, "taming GumbelVQ" if gumbel else "taming VQModel")


def _taming_key(key: str, gumbel: bool) -> str:
    return GUMBEL_CODEBOOK if gumbel and key == CODEBOOK else key


def _meta_model(init_args: Mapping[str, Any]) -> VQGAN:
    """The VQGAN on the meta device: its key names and shapes without allocating its weights."""
    with torch.device("meta"):
        return VQGAN(**init_args)


def _convert(state: Mapping[str, Tensor], source: str, gumbel: bool, resolution: int) -> Converted:
    _refuse_unrepresentable(state, source)
    init_args = read_sizes(state, source, gumbel=gumbel, resolution=resolution)
    own = _meta_model(init_args).state_dict()
    dropped = sorted(key for key in state if key.startswith(LOSS_PREFIX))
    links = [Link(key, (_taming_key(key, gumbel),)) for key in own]
    imported = import_state(state, links, source, unused=dropped)
    _check_shapes(own, imported, source, gumbel)
    report = ConversionReport(source=source, dropped=dropped)
    for key in own:
        if _taming_key(key, gumbel) == key:
            report.loaded.append(f"model.{key}")
        else:
            report.adapted[f"model.{key}"] = (
                f"renamed from {_taming_key(key, gumbel)} (taming's GumbelQuantize)"
            )
    return Converted(
        state={f"model.{key}": value for key, value in imported.items()},
        model_config={"class_path": VQGAN_CLASS, "init_args": init_args},
        report=report,
    )


def _refuse_unrepresentable(state: Mapping[str, Tensor], source: str) -> None:
    for fragment, what in _UNREPRESENTABLE.items():
        keys = sorted(key for key in state if fragment in key and not key.startswith(LOSS_PREFIX))
        if keys:
            shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
            raise KeyMappingError(f"{source}: {what}; vlp's VQGAN cannot represent it (keys {shown})")


def _shape(state: Mapping[str, Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise KeyMappingError(f"{source}: missing key {key}, which a taming VQGAN has")
    return tuple(state[key].shape)


def _count(state: Mapping[str, Tensor], key_of: Callable[[int], str]) -> int:
    """How many consecutive indices ``0, 1, ...`` have ``key_of(index)`` in ``state``."""
    count = 0
    while key_of(count) in state:
        count += 1
    return count


def read_sizes(
    state: Mapping[str, Tensor], source: str, *, gumbel: bool, resolution: int = PUBLISHED_RESOLUTION
) -> dict[str, Any]:
    """The :class:`VQGAN` ``init_args`` of a taming checkpoint, every size read from the tensor shapes.

    Raises:
        KeyMappingError: naming a key the sizes are read from that is missing, or an option of taming's
            VQGAN that vlp's cannot represent.
    """
    codebook = GUMBEL_CODEBOOK if gumbel else CODEBOOK
    other = CODEBOOK if gumbel else GUMBEL_CODEBOOK
    if codebook not in state and other in state:
        converter = "vqgan-taming (convert_vq)" if gumbel else "vqgan-taming-gumbel (convert_gumbel)"
        kind = "a VQModel" if gumbel else "a GumbelVQ"
        raise KeyMappingError(f"{source}: has {other}, not {codebook}: {kind} checkpoint; use {converter}")
    ch, in_channels = _shape(state, "encoder.conv_in.weight", source)[:2]
    levels = _count(state, lambda i: f"encoder.down.{i}.block.0.conv1.weight")
    if levels == 0:
        raise KeyMappingError(
            f"{source}: missing key encoder.down.0.block.0.conv1.weight, which a taming VQGAN has"
        )
    num_res_blocks = _count(state, lambda j: f"encoder.down.0.block.{j}.conv1.weight")
    ch_mult = []
    for level in range(levels):
        key = f"encoder.down.{level}.block.0.conv1.weight"
        width = _shape(state, key, source)[0]
        if width % ch:
            raise KeyMappingError(f"{source}: {key} has {width} output channels, not a multiple of ch={ch}")
        ch_mult.append(width // ch)
    attention = [level for level in range(levels) if f"encoder.down.{level}.attn.0.q.weight" in state]
    decoder_attention = [level for level in range(levels) if f"decoder.up.{level}.attn.0.q.weight" in state]
    if attention != decoder_attention:
        raise KeyMappingError(
            f"{source}: attention at encoder levels {attention} but decoder levels {decoder_attention}; "
            "vlp's VQGAN places both from one attn_resolutions"
        )
    if levels > 1 and "encoder.down.0.downsample.conv.weight" not in state:
        raise KeyMappingError(
            f"{source}: no encoder.down.0.downsample.conv.weight: taming's resamp_with_conv=False "
            "(average-pool downsampling, nearest upsampling without conv); vlp's VQGAN resamples with convs"
        )
    z_channels = _shape(state, "quant_conv.weight", source)[1]
    encoder_out = _shape(state, "encoder.conv_out.weight", source)[0]
    if encoder_out == 2 * z_channels:
        raise KeyMappingError(
            f"{source}: encoder.conv_out has {encoder_out} = 2 x z_channels outputs: taming's double_z=True; "
            "vlp's encoder outputs z_channels"
        )
    num_codes, code_dim = _shape(state, codebook, source)
    if gumbel:
        proj_in = _shape(state, "quantize.proj.weight", source)[1]
        if proj_in != code_dim:
            raise KeyMappingError(
                f"{source}: quantize.proj reads {proj_in} channels but the codes are {code_dim} wide; taming's "
                "GumbelVQ feeds quant_conv's embed_dim channels to proj, so only embed_dim == z_channels runs"
            )
    factor = 2 ** (levels - 1)
    if resolution % factor:
        raise ValueError(
            f"{source}: resolution {resolution} is not divisible by the downsampling factor {factor}"
        )
    init_args: dict[str, Any] = {
        "resolution": resolution,
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": num_res_blocks,
        "attn_resolutions": [resolution // 2**level for level in attention],
        "z_channels": z_channels,
        "num_codes": num_codes,
        "code_dim": code_dim,
        "in_channels": in_channels,
        "out_channels": _shape(state, "decoder.conv_out.weight", source)[0],
        "dropout": 0.0,
        "norm_groups": TAMING_NORM_GROUPS,
    }
    if gumbel:
        init_args["quantizer"] = "gumbel"
    return init_args


def _check_shapes(
    own: Mapping[str, Tensor], imported: Mapping[str, Tensor], source: str, gumbel: bool
) -> None:
    wrong = [
        f"{_taming_key(key, gumbel)}: {tuple(imported[key].shape)} vs {tuple(tensor.shape)} expected"
        for key, tensor in own.items()
        if imported[key].shape != tensor.shape
    ]
    if wrong:
        raise KeyMappingError(
            f"{source}: shapes do not fit the VQGAN its sizes describe (ch_mult / num_res_blocks differ "
            f"between encoder and decoder?): {'; '.join(wrong[:10])}"
            + (f" ({len(wrong)} in all)" if len(wrong) > 10 else "")
        )
