"""ViLT weights in three layouts: official ViLT, Hugging Face ``transformers``, and vlp.

- **official** (dandelin/ViLT, the Lightning ``ViLTransformerSS``): ``text_embeddings.*`` (BERT
  embeddings), ``token_type_embeddings``, ``transformer.{patch_embed, cls_token, pos_embed, blocks.i,
  norm}`` (timm ViT, fused ``attn.qkv``), ``pooler.dense``, and heads ``mlm_score``, ``itm_score``,
  ``vqa_classifier``, ``nlvr2_classifier``, ``rank_output``.
- **hf** (``transformers``' ``ViltModel`` and the ``ViltFor*`` classes): ``[vilt.]embeddings.*``,
  ``[vilt.]encoder.layer.i.attention.attention.{query,key,value}`` ..., ``[vilt.]layernorm``,
  ``[vilt.]pooler.dense``, and heads ``mlm_score`` (ViltForMaskedLM), ``classifier`` (VQA or NLVR2,
  told apart by its input width) and ``rank_output`` (retrieval). HF has no ITM head.
- **vlp**: the :class:`~vlp.models.vilt.ViLT` state dict (``model``) plus one state dict per head
  (``heads``): ``mlm`` (:class:`~vlp.models.layers.heads.MLMHead`), ``itm``
  (:class:`~vlp.models.layers.heads.ITMHead`), ``vqa`` and ``nlvr2``
  (:class:`~vlp.models.layers.heads.ClassifierHead`) and ``rank`` (:class:`~vlp.models.layers.heads.RankHead`).

Every source key is mapped or listed as a known buffer (BERT's ``position_ids`` / ``token_type_ids``,
checked to hold the defaults vlp assumes); anything else raises a :class:`~vlp.zoo.keys.KeyMappingError`
naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vlp.zoo.keys import KeyMappingError, Link, export_state, import_state

HEAD_NAMES = ("mlm", "itm", "vqa", "nlvr2", "rank")

# vlp key → official key, outside the blocks
_OFFICIAL_MODEL = {
    "text_embedder.word_embeddings.weight": "text_embeddings.word_embeddings.weight",
    "text_embedder.position_embeddings.weight": "text_embeddings.position_embeddings.weight",
    "text_embedder.token_type_embeddings.weight": "text_embeddings.token_type_embeddings.weight",
    "text_embedder.norm.weight": "text_embeddings.LayerNorm.weight",
    "text_embedder.norm.bias": "text_embeddings.LayerNorm.bias",
    "visual_embedder.patch_embed.proj.weight": "transformer.patch_embed.proj.weight",
    "visual_embedder.patch_embed.proj.bias": "transformer.patch_embed.proj.bias",
    "visual_embedder.cls_token": "transformer.cls_token",
    "visual_embedder.pos_embed": "transformer.pos_embed",
    "token_type_embeddings.weight": "token_type_embeddings.weight",
    "encoder.norm.weight": "transformer.norm.weight",
    "encoder.norm.bias": "transformer.norm.bias",
    "pooler.dense.weight": "pooler.dense.weight",
    "pooler.dense.bias": "pooler.dense.bias",
}
_BLOCK_PARAMS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
_CLASSIFIER_KEYS = tuple(f"classifier.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias"))
# vlp head key → key in both layouts: the MLM transform (its output bias differs) and the rank head
_MLM_TRANSFORM = {
    "dense.weight": "mlm_score.transform.dense.weight",
    "dense.bias": "mlm_score.transform.dense.bias",
    "norm.weight": "mlm_score.transform.LayerNorm.weight",
    "norm.bias": "mlm_score.transform.LayerNorm.bias",
    "decoder.weight": "mlm_score.decoder.weight",
}
_RANK = {"fc.weight": "rank_output.weight", "fc.bias": "rank_output.bias"}
# vlp head key → official key, per head
_OFFICIAL_HEADS = {
    "mlm": {**_MLM_TRANSFORM, "bias": "mlm_score.bias"},
    "itm": {"fc.weight": "itm_score.fc.weight", "fc.bias": "itm_score.fc.bias"},
    "vqa": {key: "vqa_" + key for key in _CLASSIFIER_KEYS},
    "nlvr2": {key: "nlvr2_" + key for key in _CLASSIFIER_KEYS},
    "rank": _RANK,
}
# vlp key → HF key (after the ``vilt.`` prefix), outside the blocks
_HF_MODEL = {
    "text_embedder.word_embeddings.weight": "embeddings.text_embeddings.word_embeddings.weight",
    "text_embedder.position_embeddings.weight": "embeddings.text_embeddings.position_embeddings.weight",
    "text_embedder.token_type_embeddings.weight": "embeddings.text_embeddings.token_type_embeddings.weight",
    "text_embedder.norm.weight": "embeddings.text_embeddings.LayerNorm.weight",
    "text_embedder.norm.bias": "embeddings.text_embeddings.LayerNorm.bias",
    "visual_embedder.patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "visual_embedder.patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "visual_embedder.cls_token": "embeddings.cls_token",
    "visual_embedder.pos_embed": "embeddings.position_embeddings",
    "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "encoder.norm.weight": "layernorm.weight",
    "encoder.norm.bias": "layernorm.bias",
    "pooler.dense.weight": "pooler.dense.weight",
    "pooler.dense.bias": "pooler.dense.bias",
}
_HF_BLOCK = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_HF_HEADS = {
    "mlm": {**_MLM_TRANSFORM, "bias": "mlm_score.decoder.bias"},
    "vqa": {key: key for key in _CLASSIFIER_KEYS},
    "nlvr2": {key: key for key in _CLASSIFIER_KEYS},
    "rank": _RANK,
}
HF_ARCHITECTURES = {
    None: "ViltModel",
    "mlm": "ViltForMaskedLM",
    "vqa": "ViltForQuestionAnswering",
    "nlvr2": "ViltForImagesAndTextClassification",
    "rank": "ViltForImageAndTextRetrieval",
}
_TEXT_BUFFERS = ("position_ids", "token_type_ids")


@dataclass
class ViLTWeights:
    """A ViLT in vlp's layout: the assembly's state dict and one state dict per head.

    ``model`` loads into :class:`~vlp.models.vilt.ViLT` and ``heads[name]`` into the head an
    objective owns (``objectives.<name>.head`` of a task); :meth:`task_state_dict` gives both with a
    task's key prefixes.
    """

    model: dict[str, Tensor]
    heads: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.heads) - set(HEAD_NAMES))
        if unknown:
            raise KeyMappingError(f"unknown ViLT heads {unknown}; known: {list(HEAD_NAMES)}")

    def only(self, *names: str) -> ViLTWeights:
        """The same model with only the named heads (e.g. ``only("mlm")`` for a HF ViltForMaskedLM)."""
        absent = sorted(set(names) - set(self.heads))
        if absent:
            raise KeyMappingError(f"no heads {absent} in these weights (heads: {sorted(self.heads)})")
        return ViLTWeights(dict(self.model), {name: dict(self.heads[name]) for name in names})

    def flat(self) -> dict[str, Tensor]:
        """One dict: ``model.<key>`` and ``heads.<name>.<key>``."""
        out = {f"model.{k}": v for k, v in self.model.items()}
        for name, state in self.heads.items():
            out.update({f"heads.{name}.{k}": v for k, v in state.items()})
        return out

    @classmethod
    def from_flat(cls, state: Mapping[str, Tensor]) -> ViLTWeights:
        model = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        heads: dict[str, dict[str, Tensor]] = {}
        for key, value in state.items():
            if key.startswith("heads."):
                name, rest = key[len("heads.") :].split(".", 1)
                heads.setdefault(name, {})[rest] = value
        return cls(model, heads)

    def task_state_dict(self, objectives: Mapping[str, str] | None = None) -> dict[str, Tensor]:
        """Keys of a vlp task: ``model.*`` and ``objectives.<objective>.head.*``.

        Args:
            objectives: head name → the task's objective name, when they differ (default: the same).
        """
        names = dict(objectives or {})
        out = {f"model.{k}": v for k, v in self.model.items()}
        for head, state in self.heads.items():
            prefix = f"objectives.{names.get(head, head)}.head."
            out.update({prefix + k: v for k, v in state.items()})
        return out

    @classmethod
    def from_task_state_dict(
        cls, state: Mapping[str, Tensor], objectives: Mapping[str, str] | None = None, source: str = "task"
    ) -> ViLTWeights:
        """The inverse of :meth:`task_state_dict`; any key outside ``model.`` and the heads is an error.

        Args:
            objectives: head name → the task's objective name, when they differ.
        """
        head_of = {obj: head for head, obj in (objectives or {}).items()}
        model: dict[str, Tensor] = {}
        heads: dict[str, dict[str, Tensor]] = {}
        unmapped = []
        for key, value in state.items():
            match = re.fullmatch(r"objectives\.([^.]+)\.head\.(.+)", key)
            if key.startswith("model."):
                model[key[len("model.") :]] = value
            elif match and head_of.get(match[1], match[1]) in HEAD_NAMES:
                heads.setdefault(head_of.get(match[1], match[1]), {})[match[2]] = value
            else:
                unmapped.append(key)
        if unmapped:
            raise KeyMappingError(
                f"{source}: unmapped keys {sorted(unmapped)} (expected model.* and "
                f"objectives.<{'|'.join(HEAD_NAMES)}>.head.*; name other objectives with `objectives`)"
            )
        return cls(model, heads)


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def _depth(state: Mapping[str, Tensor], pattern: str) -> int:
    indices = [int(m[1]) for key in state if (m := re.match(pattern, key))]
    return max(indices) + 1 if indices else 0


def _model_depth(model: Mapping[str, Tensor]) -> int:
    return _depth(model, r"encoder\.blocks\.(\d+)\.")


def _check_text_buffers(state: Mapping[str, Tensor], prefix: str, source: str) -> list[str]:
    """BERT's ``position_ids`` / ``token_type_ids`` buffers: known, unused, and checked to hold the
    defaults vlp's TextEmbedder always uses (positions 0..L-1, segment 0)."""
    keys = []
    for name in _TEXT_BUFFERS:
        key = prefix + name
        if key not in state:
            continue
        buffer = state[key]
        expected = torch.arange(buffer.shape[-1]) if name == "position_ids" else torch.zeros(buffer.shape[-1])
        if not torch.equal(buffer.reshape(-1).long(), expected.long()):
            raise ValueError(
                f"{source}: {key} is not the default ({'0..L-1' if name == 'position_ids' else 'zeros'}); "
                "vlp's TextEmbedder cannot reproduce custom text positions or segments"
            )
        keys.append(key)
    return keys


def _block_links(ours_prefix: str, theirs: Mapping[str, str | tuple[str, ...]], depth: int) -> list[Link]:
    links = []
    for i in range(depth):
        for ours, their in theirs.items():
            names = (their,) if isinstance(their, str) else their
            for param in ("weight", "bias"):
                links.append(
                    Link(
                        f"model.{ours_prefix}.{i}.{ours}.{param}",
                        tuple(n.format(i=i) + f".{param}" for n in names),
                        optional=param == "bias" and ours == "attn.qkv",
                    )
                )
    return links


def _official_links(depth: int, heads: Iterable[str]) -> list[Link]:
    links = [Link(f"model.{ours}", (theirs,)) for ours, theirs in _OFFICIAL_MODEL.items()]
    links += _block_links(
        "encoder.blocks", {p: f"transformer.blocks.{{i}}.{p}" for p in _BLOCK_PARAMS}, depth
    )
    for head in heads:
        links += [Link(f"heads.{head}.{ours}", (theirs,)) for ours, theirs in _OFFICIAL_HEADS[head].items()]
    return links


def _hf_links(depth: int, heads: Iterable[str], prefix: str) -> list[Link]:
    links = [Link(f"model.{ours}", (prefix + theirs,)) for ours, theirs in _HF_MODEL.items()]
    layer = prefix + "encoder.layer.{i}."
    block = {ours: layer + theirs for ours, theirs in _HF_BLOCK.items()}
    block["attn.qkv"] = tuple(layer + f"attention.attention.{n}" for n in ("query", "key", "value"))
    links += _block_links("encoder.blocks", block, depth)
    for head in heads:
        links += [Link(f"heads.{head}.{ours}", (theirs,)) for ours, theirs in _HF_HEADS[head].items()]
    return links


# ---------------------------------------------------------------------------------------- official


def official_to_vlp(state: Mapping[str, Tensor], source: str = "official ViLT state dict") -> ViLTWeights:
    """An official ViLT state dict (the ``state_dict`` of its Lightning ``.ckpt``) → vlp.

    Heads are taken when present (``mlm_score``, ``itm_score``, ``vqa_classifier``,
    ``nlvr2_classifier``, ``rank_output``). Any other key (e.g. ``mpp_score`` of the masked-patch
    ablation, which vlp has no head for) raises, naming it; drop such keys explicitly beforehand.
    """
    heads = [h for h, keys in _OFFICIAL_HEADS.items() if any(k in state for k in keys.values())]
    unused = _check_text_buffers(state, "text_embeddings.", source)
    depth = _depth(state, r"transformer\.blocks\.(\d+)\.")
    return ViLTWeights.from_flat(import_state(state, _official_links(depth, heads), source, unused))


def vlp_to_official(weights: ViLTWeights, target: str = "official ViLT layout") -> dict[str, Tensor]:
    """vlp → an official ViLT state dict (every head has an official counterpart).

    ``text_embeddings.position_ids`` (0..L-1) is written too: the BERT embeddings of official ViLT's
    time saved it, so the result loads strictly into the official model.
    """
    state = export_state(weights.flat(), _official_links(_model_depth(weights.model), weights.heads), target)
    length = state["text_embeddings.position_embeddings.weight"].shape[0]
    state["text_embeddings.position_ids"] = torch.arange(length)[None]
    return state


# ---------------------------------------------------------------------------------------- Hugging Face


def hf_to_vlp(state: Mapping[str, Tensor], source: str = "Hugging Face ViLT state dict") -> ViLTWeights:
    """A ``transformers`` ViLT state dict (``ViltModel`` or any ``ViltFor*`` with one of the heads
    vlp has) → vlp.

    ``classifier.*`` is the VQA head when its input is the hidden width and the NLVR2 head when it is
    a multiple of it. ``ViltForMaskedLM`` ties ``mlm_score.decoder.weight`` to the word embeddings
    (``ViltConfig`` forces ``tie_word_embeddings``), so ``save_pretrained`` may omit it: it is then
    taken from the word embeddings. transformers 4.x also saved the decoder bias as ``mlm_score.bias``;
    that second name is accepted when it holds the same tensor.
    """
    state = dict(state)
    prefix = "vilt." if any(k.startswith("vilt.") for k in state) else ""
    heads = [h for h, keys in _HF_HEADS.items() if h != "nlvr2" and any(k in state for k in keys.values())]
    if "vqa" in heads:
        hidden = state[prefix + "embeddings.cls_token"].shape[-1]
        width = state["classifier.0.weight"].shape[1] if "classifier.0.weight" in state else hidden
        if width != hidden:
            heads[heads.index("vqa")] = "nlvr2"
    if "mlm_score.bias" in state:  # transformers 4.x: a second name of mlm_score.decoder.bias
        legacy = state.pop("mlm_score.bias")
        current = state.setdefault("mlm_score.decoder.bias", legacy)
        if not torch.equal(current, legacy):
            raise ValueError(
                f"{source}: mlm_score.bias and mlm_score.decoder.bias differ; which is the bias?"
            )
        heads += [] if "mlm" in heads else ["mlm"]
    if "mlm" in heads and "mlm_score.decoder.weight" not in state:
        state["mlm_score.decoder.weight"] = state[
            prefix + "embeddings.text_embeddings.word_embeddings.weight"
        ]
    unused = _check_text_buffers(state, prefix + "embeddings.text_embeddings.", source)
    depth = _depth(state, re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
    return ViLTWeights.from_flat(import_state(state, _hf_links(depth, heads, prefix), source, unused))


def hf_architecture(weights: ViLTWeights) -> str:
    """The ``transformers`` class that holds these weights: ``ViltModel`` without heads, else the
    ``ViltFor*`` class of the one head (HF classes carry one head each and none for ITM)."""
    if "itm" in weights.heads:
        raise KeyMappingError(
            "Hugging Face ViLT has no ITM head; export without it, e.g. weights.only('mlm')"
        )
    if len(weights.heads) > 1:
        raise KeyMappingError(
            f"a Hugging Face ViLT class carries one head, these weights have {sorted(weights.heads)}; "
            "choose one with weights.only(name)"
        )
    return HF_ARCHITECTURES[next(iter(weights.heads), None)]


def vlp_to_hf(weights: ViLTWeights, target: str = "Hugging Face ViLT layout") -> dict[str, Tensor]:
    """vlp → the state dict of :func:`hf_architecture`'s class (``vilt.``-prefixed when it has a head).

    Raises:
        KeyMappingError: for an ITM head or several heads (see :func:`hf_architecture`).
        ValueError: for an MLM head whose decoder is not the word-embedding matrix: ``transformers``
            ties the two in ``ViltForMaskedLM`` and would silently overwrite one with the other.
    """
    hf_architecture(weights)
    decoder = weights.heads.get("mlm", {}).get("decoder.weight")
    words = weights.model.get("text_embedder.word_embeddings.weight")
    untied = decoder is not None and words is not None and not _same(decoder, words)
    if untied:  # (a missing tensor is named by the export below)
        raise ValueError(
            f"{target}: the MLM decoder is not tied to the word embeddings, but transformers' "
            "ViltForMaskedLM ties them (ViltConfig forces tie_word_embeddings=True); exporting would "
            "lose one of them. Export without the MLM head (weights.only(...)) or tie them first."
        )
    prefix = "vilt." if weights.heads else ""
    return export_state(weights.flat(), _hf_links(_model_depth(weights.model), weights.heads, prefix), target)
