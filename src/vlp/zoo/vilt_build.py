"""Build a vlp ViLT (and its heads) equivalent to a ``transformers`` ``ViltConfig``, and back.

``ViltConfig`` is the common description of a ViLT's sizes: Hugging Face checkpoints carry one, and
:func:`config_from_weights` derives one from the tensor shapes of any checkpoint (official ViLT's
``.ckpt`` keeps its sizes only in pickled hyper-parameters). The one size no shape tells is the number
of attention heads.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

from torch import Tensor, nn
from transformers import ViltConfig

from vlp.checkpoints import read_state_dict
from vlp.models.embedders.text import TextEmbedder
from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.layers.heads import ClassifierHead, ITMHead, MLMHead, Pooler, RankHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.zoo.files import read_hf_folder
from vlp.zoo.keys import KeyMappingError
from vlp.zoo.vilt import HEAD_NAMES, ViLTWeights, hf_architecture, hf_to_vlp, official_to_vlp

# official ViLT: timm's ViT blocks use LayerNorm eps 1e-6; its BERT parts (text embeddings, MLM head) 1e-12
OFFICIAL_ENCODER_NORM_EPS = 1e-6


def _side(value: int | list[int] | tuple[int, ...], name: str) -> int:
    if isinstance(value, int):
        return value
    if len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ValueError(f"ViltConfig.{name}={value!r}: vlp's ViTPatchEmbedder needs a square {name}")


def vilt_from_config(
    config: ViltConfig, encoder_norm_eps: float | None = None, sample_at_eval: bool | None = None
) -> ViLT:
    """A randomly initialised vlp :class:`ViLT` with ``config``'s sizes, computing what HF's ViltModel does.

    Args:
        encoder_norm_eps: the encoder blocks' LayerNorm eps, when it differs from
            ``config.layer_norm_eps`` (official ViLT: :data:`OFFICIAL_ENCODER_NORM_EPS`).
        sample_at_eval: sample ``config.max_image_length`` patches in eval mode too; by default as HF
            (whenever ``max_image_length > 0``).
    """
    if config.hidden_act != "gelu":
        raise ValueError(
            f"ViltConfig.hidden_act={config.hidden_act!r}: vlp's blocks and heads use exact 'gelu'"
        )
    if config.intermediate_size % config.hidden_size:
        raise ValueError(
            f"ViltConfig.intermediate_size={config.intermediate_size} is not a multiple of "
            f"hidden_size={config.hidden_size}"
        )
    patch = _side(config.patch_size, "patch_size")
    image = _side(config.image_size, "image_size")
    dim = config.hidden_size
    return ViLT(
        TextEmbedder(
            vocab_size=config.vocab_size,
            dim=dim,
            max_len=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            pad_id=config.pad_token_id if config.pad_token_id is not None else 0,
            dropout=config.hidden_dropout_prob,
            norm_eps=config.layer_norm_eps,
        ),
        ViTPatchEmbedder(
            dim=dim,
            patch_size=patch,
            pos_grid=image // patch,
            max_image_len=config.max_image_length,
            sample_at_eval=config.max_image_length > 0 if sample_at_eval is None else sample_at_eval,
            in_chans=config.num_channels,
        ),
        TransformerEncoder(
            dim=dim,
            depth=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            mlp_ratio=config.intermediate_size / dim,
            qkv_bias=config.qkv_bias,
            drop=config.hidden_dropout_prob,
            attn_drop=config.attention_probs_dropout_prob,
            norm_eps=config.layer_norm_eps if encoder_norm_eps is None else encoder_norm_eps,
        ),
        Pooler(dim),
        num_modality_types=config.modality_type_vocab_size,
    )


def head_from_config(name: str, config: ViltConfig) -> nn.Module:
    """A randomly initialised vlp head named ``name`` (see :data:`~vlp.zoo.vilt.HEAD_NAMES`).

    ``vqa`` has ``config.num_labels`` classes over the pooled state; ``nlvr2`` the same over
    ``config.num_images`` pooled states (2 when unset) with a hidden layer of that width, as HF and
    official ViLT; ``rank`` is the retrieval score (:class:`~vlp.models.layers.heads.RankHead`).
    """
    dim = config.hidden_size
    if name == "mlm":
        return MLMHead(dim, config.vocab_size, norm_eps=config.layer_norm_eps)
    if name == "itm":
        return ITMHead(dim)
    if name == "vqa":
        return ClassifierHead(dim, config.num_labels)
    if name == "nlvr2":
        width = dim * (config.num_images if config.num_images > 0 else 2)
        return ClassifierHead(width, config.num_labels, hidden_dim=width)
    if name == "rank":
        return RankHead(dim)
    raise KeyMappingError(f"unknown ViLT head {name!r}; known: {list(HEAD_NAMES)}")


def load_vilt(
    weights: ViLTWeights,
    config: ViltConfig,
    encoder_norm_eps: float | None = None,
    sample_at_eval: bool | None = None,
) -> tuple[ViLT, dict[str, nn.Module]]:
    """Build the model and the heads of ``weights`` from ``config`` and load them strictly.

    A size that disagrees with the weights, a missing or an unexpected key fails, naming it.
    """
    model = vilt_from_config(config, encoder_norm_eps, sample_at_eval)
    _load_strict(model, weights.model, "model")
    heads = {}
    for name, state in weights.heads.items():
        heads[name] = head_from_config(name, _head_config(name, state, config))
        _load_strict(heads[name], state, f"heads.{name}")
    return model, heads


def load_hf_folder(
    path: str | os.PathLike, sample_at_eval: bool | None = None
) -> tuple[ViLT, dict[str, nn.Module], ViltConfig]:
    """A vlp ViLT and heads computing what a local HF ViLT folder's model computes, and its config."""
    state, config = read_hf_folder(path)
    model, heads = load_vilt(hf_to_vlp(state, source=str(path)), config, sample_at_eval=sample_at_eval)
    return model, heads, config


def load_official_checkpoint(
    path: str | os.PathLike, num_attention_heads: int = 12, max_image_length: int = -1
) -> tuple[ViLT, dict[str, nn.Module], ViltConfig]:
    """A vlp ViLT and heads from an official ViLT ``.ckpt`` (encoder LayerNorm eps 1e-6 as official ViLT).

    Args:
        num_attention_heads: the official checkpoints are ViLT-B/32: 12.
        max_image_length: patches sampled per image (official pre-training: 200, fine-tuning: -1, all).
    """
    weights = official_to_vlp(read_state_dict(path), source=str(path))
    config = config_from_weights(weights, num_attention_heads, max_image_length=max_image_length)
    model, heads = load_vilt(weights, config, encoder_norm_eps=OFFICIAL_ENCODER_NORM_EPS)
    return model, heads, config


def _head_config(name: str, state: Mapping[str, Tensor], config: ViltConfig) -> ViltConfig:
    """``config`` with the classifier sizes of this head's weights (a VQA and an NLVR2 head may both be
    present and differ in classes)."""
    if name not in ("vqa", "nlvr2") or "classifier.3.weight" not in state:
        return config
    config = copy.deepcopy(config)
    config.num_labels = state["classifier.3.weight"].shape[0]
    if name == "nlvr2":
        config.num_images = state["classifier.0.weight"].shape[1] // config.hidden_size
    return config


def _load_strict(module: nn.Module, state: Mapping[str, Tensor], name: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise KeyMappingError(f"{name}: weights do not fit {type(module).__name__}: {error}") from error


def config_from_weights(
    weights: ViLTWeights,
    num_attention_heads: int,
    layer_norm_eps: float = 1e-12,
    max_image_length: int = -1,
) -> ViltConfig:
    """A ``ViltConfig`` with the sizes of ``weights`` (vocabulary, width, depth, MLP, text length,
    patch size, position grid, modality types, classes); ``architectures`` names
    :func:`~vlp.zoo.vilt.hf_architecture`'s class when HF has one for these heads.

    Args:
        num_attention_heads: the one size tensor shapes do not tell (ViLT-B/32: 12).
        layer_norm_eps: HF's single eps for every LayerNorm (official ViLT's blocks use 1e-6, its
            BERT parts 1e-12; HF's own ViLT conversion used 1e-12 throughout).
    """
    model = weights.model
    words = model["text_embedder.word_embeddings.weight"]
    proj = model["visual_embedder.patch_embed.proj.weight"]
    dim = words.shape[1]
    grid = round((model["visual_embedder.pos_embed"].shape[1] - 1) ** 0.5)
    if grid * grid + 1 != model["visual_embedder.pos_embed"].shape[1]:
        raise ValueError(
            f"visual_embedder.pos_embed {tuple(model['visual_embedder.pos_embed'].shape)} is not 1 + a square grid"
        )
    depth = len({key.split(".")[2] for key in model if key.startswith("encoder.blocks.")})
    labels: dict[str, int] = {}
    for name in ("vqa", "nlvr2"):
        if name in weights.heads:
            labels["num_labels"] = weights.heads[name]["classifier.3.weight"].shape[0]
    if "nlvr2" in weights.heads:
        labels["num_images"] = weights.heads["nlvr2"]["classifier.0.weight"].shape[1] // dim
    return ViltConfig(
        vocab_size=words.shape[0],
        type_vocab_size=model["text_embedder.token_type_embeddings.weight"].shape[0],
        modality_type_vocab_size=model["token_type_embeddings.weight"].shape[0],
        max_position_embeddings=model["text_embedder.position_embeddings.weight"].shape[0],
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=num_attention_heads,
        intermediate_size=model["encoder.blocks.0.mlp.fc1.weight"].shape[0],
        layer_norm_eps=layer_norm_eps,
        image_size=grid * proj.shape[-1],
        patch_size=proj.shape[-1],
        num_channels=proj.shape[1],
        qkv_bias="encoder.blocks.0.attn.qkv.bias" in model,
        max_image_length=max_image_length,
        architectures=_architectures(weights),
        **labels,
    )


def _architectures(weights: ViLTWeights) -> list[str] | None:
    """HF's class for these weights, or ``None`` when HF has none (an ITM head, several heads)."""
    try:
        return [hf_architecture(weights)]
    except KeyMappingError:
        return None


def config_from_model(model: ViLT, heads: Mapping[str, nn.Module] | None = None) -> ViltConfig:
    """The ``ViltConfig`` of a built vlp ViLT (and heads): sizes from the weights, attention heads,
    LayerNorm eps, dropout and patch sampling from the modules.

    Raises:
        ValueError: if the model is not a patch ViLT, or its LayerNorms (and the MLM head's) disagree
            on eps: HF has one ``layer_norm_eps``. The classifier heads' LayerNorm has PyTorch's default
            eps in HF, official ViLT and vlp alike.
    """
    heads = dict(heads or {})
    visual = model.visual_embedder
    if not isinstance(visual, ViTPatchEmbedder):
        raise ValueError(
            f"HF ViLT has patch embeddings; this model's visual_embedder is {type(visual).__name__}"
        )
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    if "mlm" in heads:
        norms += [m for m in heads["mlm"].modules() if isinstance(m, nn.LayerNorm)]
    eps = sorted({m.eps for m in norms})
    if len(eps) != 1:
        raise ValueError(f"the model's LayerNorms use eps {eps}; HF's ViltConfig has one layer_norm_eps")
    weights = ViLTWeights(model.state_dict(), {name: head.state_dict() for name, head in heads.items()})
    config = config_from_weights(
        weights,
        num_attention_heads=model.encoder.blocks[0].attn.num_heads,
        layer_norm_eps=eps[0],
        max_image_length=visual.max_image_len,
    )
    config.hidden_dropout_prob = model.encoder.blocks[0].attn.proj_drop.p
    config.attention_probs_dropout_prob = model.encoder.blocks[0].attn.attn_drop
    return config
