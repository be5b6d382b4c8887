"""DETR → E2E-VLP parts: the same numbers in both source layouts, every key accounted for.

A tiny random transformers DETR (timm ResNet-18, width 32, 4 heads, FFN 64, 1 encoder and 2 decoder
layers, 5 queries, 3 classes) written by its own ``save_pretrained`` (the Hub file's names), and the
official facebookresearch/detr layout derived from torch and torchvision modules under DETR's module
names. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d
from transformers import DetrConfig, DetrForObjectDetection

from vlp.models.e2e_vlp.model import E2EVLP
from vlp.models.embedders.cnn_grid import CNNGridEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.decoder import TransformerDecoder
from vlp.models.layers.heads import DetectionHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.outputs import FusionOutput
from vlp.objectives.detection import DetectionObjective
from vlp.tasks.detection import DetectionTask
from vlp.tasks.init_from import load_matching
from vlp.zoo.converted import check_expected
from vlp.zoo.detr import QKV_MERGED, convert_hf, convert_official
from vlp.zoo.keys import KeyMappingError
from vlp.zoo.registry import get_entry

ATOL = 1e-5  # fp32; the implementations may order a matmul's or a LayerNorm's reductions differently
DIM, HEADS, FFN, QUERIES, LABELS, ENCODER_LAYERS, DECODER_LAYERS = 32, 4, 64, 5, 3, 1, 2
BATCH, HEIGHT, WIDTH, REAL_WIDTH = 2, 96, 128, 64  # image 1 is padded on the right from REAL_WIDTH
# The task keys DETR has no weights for (E2E-VLP's text side and cross-modal encoder).
NOT_FROM_DETR = re.compile(r"model\.(text_embedder|token_type_embeddings|encoder|pooler|caption_head)\.")


def randomise(model: nn.Module, seed: int = 1) -> None:
    """Weights whose mistakes show. BatchNorm and LayerNorm scales in [0.5, 1.5], their shifts, the
    running means and every bias ~ N(0, 0.1²), running variances in [0.5, 1.5] (init leaves identities
    and zeros); linear weights ~ N(0, 2² / fan_in) and the query embeddings ~ N(0, 1), so attention is
    peaked (at init's std 0.02 it is uniform, and swapping q and k would change nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.ndim == 2:
                scale = 1.0 if "query_position" in name else 2.0 / tensor.shape[1] ** 0.5
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
            elif name.endswith("running_var") or (tensor.ndim == 1 and name.endswith("weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)


def tiny_detr() -> DetrForObjectDetection:
    torch.manual_seed(0)
    config = DetrConfig(
        use_timm_backbone=True,
        backbone="resnet18",
        use_pretrained_backbone=False,
        d_model=DIM,
        encoder_layers=ENCODER_LAYERS,
        decoder_layers=DECODER_LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        num_queries=QUERIES,
        num_labels=LABELS,
        dropout=0.0,
    )
    model = DetrForObjectDetection(config).eval()
    randomise(model)
    return model


def official_modules() -> nn.Module:
    """facebookresearch/detr's module tree at the tiny sizes (its ``models/`` names): a torchvision
    ResNet-18 with frozen BatchNorm as ``backbone.0.body`` (no avgpool / fc: DETR keeps up to layer4),
    ``nn.MultiheadAttention`` s, ``linear1/2``, ``norm1..3``, the decoder's final norm, the heads."""

    def layer(decoder: bool) -> nn.ModuleDict:
        parts: dict[str, nn.Module] = {"self_attn": nn.MultiheadAttention(DIM, HEADS, batch_first=True)}
        if decoder:
            parts["multihead_attn"] = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        parts |= {"linear1": nn.Linear(DIM, FFN), "linear2": nn.Linear(FFN, DIM)}
        parts |= {f"norm{i}": nn.LayerNorm(DIM) for i in range(1, 4 if decoder else 3)}
        return nn.ModuleDict(parts)

    body = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    del body.avgpool, body.fc
    encoder = nn.ModuleDict({"layers": nn.ModuleList(layer(False) for _ in range(ENCODER_LAYERS))})
    decoder = nn.ModuleDict(
        {"layers": nn.ModuleList(layer(True) for _ in range(DECODER_LAYERS)), "norm": nn.LayerNorm(DIM)}
    )
    box_layers = [nn.Linear(DIM, DIM), nn.Linear(DIM, DIM), nn.Linear(DIM, 4)]
    return nn.ModuleDict(
        {
            "backbone": nn.ModuleList([nn.ModuleDict({"body": body})]),
            "input_proj": nn.Conv2d(512, DIM, kernel_size=1),
            "query_embed": nn.Embedding(QUERIES, DIM),
            "transformer": nn.ModuleDict({"encoder": encoder, "decoder": decoder}),
            "class_embed": nn.Linear(DIM, LABELS + 1),
            "bbox_embed": nn.ModuleDict({"layers": nn.ModuleList(box_layers)}),
        }
    )


_HUB_PREFIX = {
    "backbone.0.body.": "model.backbone.conv_encoder.model.",
    "input_proj.": "model.input_projection.",
    "query_embed.": "model.query_position_embeddings.",
    "transformer.decoder.norm.": "model.decoder.layernorm.",
    "class_embed.": "class_labels_classifier.",
    "bbox_embed.": "bbox_predictor.",
}
_HUB_MODULE = {
    "self_attn": "self_attn",
    "multihead_attn": "encoder_attn",
    "linear1": "fc1",
    "linear2": "fc2",
    "out_proj": "out_proj",
}
_HUB_NORM = {
    "encoder": {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"},
    "decoder": {
        "norm1": "self_attn_layer_norm",
        "norm2": "encoder_attn_layer_norm",
        "norm3": "final_layer_norm",
    },
}


def official_value(key: str, hub: dict[str, Tensor]) -> Tensor:
    """The official key's tensor from the same model's Hub file (q, k, v stacked into ``in_proj``)."""
    for prefix, hub_prefix in _HUB_PREFIX.items():
        if key.startswith(prefix):
            return hub[hub_prefix + key[len(prefix) :]]
    stack, index, module, rest = re.fullmatch(r"transformer\.(\w+)\.layers\.(\d+)\.(\w+)\.(.+)", key).groups()
    layer = f"model.{stack}.layers.{index}."
    if module in _HUB_NORM[stack]:
        return hub[f"{layer}{_HUB_NORM[stack][module]}.{rest}"]
    if rest.startswith("in_proj_"):
        param = rest.removeprefix("in_proj_")
        return torch.cat([hub[f"{layer}{_HUB_MODULE[module]}.{x}_proj.{param}"] for x in "qkv"])
    return hub[f"{layer}{_HUB_MODULE[module]}.{rest}"]


def e2e_task(freeze_bn: bool = True) -> DetectionTask:
    """A tiny E2E-VLP detection task with DETR's sizes and decoder where DETR's weights go (LayerNorm eps
    1e-5, post-norm, ReLU)."""
    torch.manual_seed(2)
    model = E2EVLP(
        TextEmbedder(vocab_size=32, dim=DIM, max_len=8),
        CNNGridEmbedder(dim=DIM, backbone="resnet18", freeze_bn=freeze_bn),
        TransformerEncoder(dim=DIM, depth=1, num_heads=HEADS),
        TransformerDecoder(
            dim=DIM,
            depth=DECODER_LAYERS,
            num_heads=HEADS,
            mlp_ratio=FFN / DIM,
            norm_eps=1e-5,
            post_norm=True,
            activation="relu",
        ),
        num_queries=QUERIES,
    )
    head = DetectionHead(DIM, LABELS)
    return DetectionTask(model, {"detection": DetectionObjective(head)}, use_text=False).eval()


def images() -> tuple[Tensor, Tensor]:
    """Pixels ``[B, 3, H, W]`` and their mask; image 1's padding is zero, as vlp's embedder makes it."""
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(BATCH, 3, HEIGHT, WIDTH, generator=generator)
    mask = torch.ones(BATCH, HEIGHT, WIDTH, dtype=torch.bool)
    mask[1, :, REAL_WIDTH:] = False
    return pixels * mask[:, None], mask


@dataclass
class DetrRun:
    """What the transformers DETR computed on :func:`images`, captured at its decoder's input."""

    features: Tensor  # the backbone's last feature map
    projected: Tensor  # input_projection's output
    memory: Tensor
    memory_mask: Tensor
    memory_pos: Tensor
    states: Tensor  # the decoder's last layer through its final norm
    logits: Tensor
    boxes: Tensor


def run_detr(model: DetrForObjectDetection, pixels: Tensor, mask: Tensor) -> DetrRun:
    seen: dict[str, object] = {}

    def decoder_inputs(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.update(kwargs)

    def projection_output(module: nn.Module, args: tuple, output: Tensor) -> None:
        seen["projected"] = output

    hooks = [
        model.model.decoder.register_forward_pre_hook(decoder_inputs, with_kwargs=True),
        model.model.input_projection.register_forward_hook(projection_output),
    ]
    with torch.no_grad():
        out = model(pixel_values=pixels, pixel_mask=mask.long())
        features = model.model.backbone.model(pixels)[-1]
    for hook in hooks:
        hook.remove()
    return DetrRun(
        features=features,
        projected=seen["projected"],
        memory=seen["encoder_hidden_states"],
        memory_mask=seen["encoder_attention_mask"].bool(),
        memory_pos=seen["spatial_position_embeddings"],
        states=out.last_hidden_state,
        logits=out.logits,
        boxes=out.pred_boxes,
    )


@pytest.fixture(scope="module")
def detr() -> DetrForObjectDetection:
    return tiny_detr()


@pytest.fixture(scope="module")
def hub_state(detr: DetrForObjectDetection, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tensor]:
    """The Hub file's state dict, as transformers' ``save_pretrained`` writes it."""
    folder = tmp_path_factory.mktemp("detr_hf")
    detr.save_pretrained(folder)
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="module")
def official_state(hub_state: dict[str, Tensor]) -> dict[str, Tensor]:
    layout = official_modules().state_dict()
    state = {key: official_value(key, hub_state).clone() for key in layout}
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in layout.items()}
    return state


@pytest.fixture(scope="module")
def task(hub_state: dict[str, Tensor]) -> DetectionTask:
    task = e2e_task()
    load_matching(task, convert_hf(hub_state, "tiny hf").state, "tiny hf")
    return task


def pre_norm_decoder(
    official: nn.Module, memory: Tensor, memory_mask: Tensor, memory_pos: Tensor, query_pos: Tensor
) -> Tensor:
    """DETR's ``pre_norm`` decoder variant on the official modules (``nn.MultiheadAttention``): every
    layer's output through the final norm, ``[L, B, Q, D]``."""
    decoder = official["transformer"]["decoder"]
    x, outputs = torch.zeros_like(query_pos), []
    for layer in decoder["layers"]:
        h = layer["norm1"](x)
        x = x + layer["self_attn"](h + query_pos, h + query_pos, h, need_weights=False)[0]
        h = layer["norm2"](x)
        x = (
            x
            + layer["multihead_attn"](
                h + query_pos, memory + memory_pos, memory, key_padding_mask=~memory_mask, need_weights=False
            )[0]
        )
        h = layer["norm3"](x)
        x = x + layer["linear2"](torch.relu(layer["linear1"](h)))
        outputs.append(decoder["norm"](x))
    return torch.stack(outputs)


def detr_memory(task: DetectionTask, ref: DetrRun, pixels: Tensor, mask: Tensor) -> FusionOutput:
    """A fusion output whose image states are DETR's encoder memory, with vlp's own token mask and positions."""
    tokens = task.model.visual_embedder(pixels, mask)
    return FusionOutput(
        text_states=ref.memory[:, :0],
        image_states=ref.memory,
        text_mask=tokens.mask[:, :0],
        image_mask=tokens.mask,
        pooled=ref.memory[:, 0],
        visual=tokens,
    )


def max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_official_layout_is_detrs(official_state: dict[str, Tensor]) -> None:
    """The derived layout has the published files' names: frozen BatchNorm without step counters,
    fused in_proj, a 3-layer box MLP, no encoder norm (post-norm)."""
    shapes = {key: tuple(value.shape) for key, value in official_state.items()}
    assert shapes["backbone.0.body.layer4.1.bn2.running_var"] == (512,)
    assert shapes["backbone.0.body.layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["transformer.decoder.layers.1.multihead_attn.in_proj_weight"] == (3 * DIM, DIM)
    assert shapes["transformer.encoder.layers.0.self_attn.out_proj.bias"] == (DIM,)
    assert shapes["bbox_embed.layers.2.weight"] == (4, DIM)
    assert shapes["class_embed.weight"] == (LABELS + 1, DIM)
    assert not any(
        k.endswith("num_batches_tracked") or k.startswith("transformer.encoder.norm") for k in shapes
    )


def test_converted_keys_are_the_e2e_task_keys(hub_state: dict[str, Tensor]) -> None:
    task = e2e_task()
    converted = convert_hf(hub_state, "tiny hf")
    report = load_matching(task, converted.state, "tiny hf")
    assert report.dropped == []
    assert report.new and all(NOT_FROM_DETR.match(key) for key in report.new)
    assert converted.model_config is None
    # a BatchNorm that is not frozen also counts steps: those counters are the only keys DETR lacks
    trained = CNNGridEmbedder(dim=DIM, backbone="resnet18", freeze_bn=False)
    visual = {
        k.removeprefix("model.visual_embedder.") for k in converted.state if k.startswith("model.visual_")
    }
    assert visual <= set(trained.state_dict())
    assert all(k.endswith(".num_batches_tracked") for k in set(trained.state_dict()) - visual)


def test_visual_embedder_matches_detr(detr: DetrForObjectDetection, task: DetectionTask) -> None:
    pixels, mask = images()
    ref = run_detr(detr, pixels, mask)
    embedder = task.model.visual_embedder
    with torch.no_grad():
        features = embedder.backbone(pixels)[-1]
        tokens = embedder(pixels, mask)
    assert tokens.grid == (3, 4)
    assert max_diff(features, ref.features) <= ATOL
    assert max_diff(tokens.embeds, ref.projected.flatten(2).transpose(1, 2)) <= ATOL
    assert torch.equal(tokens.mask, ref.memory_mask)
    assert not tokens.mask[1].all()  # the padded image has padded tokens
    assert max_diff(tokens.pos, ref.memory_pos) <= ATOL


def test_decoder_and_heads_match_detr_in_detr_order(
    detr: DetrForObjectDetection, task: DetectionTask
) -> None:
    """E2E-VLP's object-query pass (``detect``) with a post-norm ReLU decoder reproduces DETR's decoder
    and heads, given DETR's memory and vlp's own token mask and positions."""
    pixels, mask = images()
    ref = run_detr(detr, pixels, mask)
    with torch.no_grad():
        states = task.model.detect(detr_memory(task, ref, pixels, mask)).query_states[-1]
        predictions = task.objectives["detection"].head(states)
    assert max_diff(states, ref.states) <= ATOL
    assert max_diff(predictions.logits, ref.logits) <= ATOL
    assert max_diff(predictions.boxes, ref.boxes) <= ATOL


def test_e2e_detect_is_detr_pre_norm_with_relu(
    detr: DetrForObjectDetection, task: DetectionTask, official_state: dict[str, Tensor]
) -> None:
    """E2E-VLP's own object-query pass (``detect``: zero queries, query positions in every layer's queries
    and keys, memory positions in the cross-attention keys, every layer through the final norm) is
    DETR's pre_norm decoder variant with the same weights once the layers are pre-norm."""
    pixels, mask = images()
    ref = run_detr(detr, pixels, mask)
    official = official_modules()
    official.load_state_dict(official_state)
    model = copy.deepcopy(task.model)
    for layer in model.decoder.layers:
        layer.post_norm = False
    with torch.no_grad():
        tokens = model.visual_embedder(pixels, mask)
        states = model.detect(detr_memory(task, ref, pixels, mask)).query_states
        query_pos = official["query_embed"].weight[None].expand(BATCH, -1, -1)
        expected = pre_norm_decoder(official, ref.memory, tokens.mask, tokens.pos, query_pos)
    assert states.shape == (DECODER_LAYERS, BATCH, QUERIES, DIM)
    assert max_diff(states, expected) <= ATOL


def test_official_and_hf_give_the_same_weights(
    hub_state: dict[str, Tensor], official_state: dict[str, Tensor]
) -> None:
    official = convert_official(official_state, "tiny official")
    hf = convert_hf(hub_state, "tiny hf")
    assert official.state.keys() == hf.state.keys()
    assert all(torch.equal(official.state[key], hf.state[key]) for key in hf.state)
    # every vlp key is accounted for once; the fused in_proj is vlp's layout as it is
    for converted in (official, hf):
        assert sorted(converted.report.loaded + list(converted.report.adapted)) == sorted(converted.state)
    assert official.report.adapted == {}
    qkv = [
        f"model.decoder.layers.{n}.{a}.qkv.{p}"
        for n in range(2)
        for a in ("self_attn", "cross_attn")
        for p in ("weight", "bias")
    ]
    assert hf.report.adapted == dict.fromkeys(qkv, QKV_MERGED)


def test_only_the_image_encoder_is_dropped(
    hub_state: dict[str, Tensor], official_state: dict[str, Tensor]
) -> None:
    official = convert_official(official_state, "tiny official")
    hf = convert_hf(hub_state, "tiny hf")
    assert official.report.dropped == sorted(
        k for k in official_state if k.startswith("transformer.encoder.")
    )
    assert hf.report.dropped == sorted(k for k in hub_state if k.startswith("model.encoder."))
    # HF keeps q, k, v apart: 6 tensors per encoder layer where the official in_proj has 2
    assert len(hf.report.dropped) == len(official.report.dropped) + 4 * ENCODER_LAYERS
    for name in ("detr:r50", "detr:r101"):
        check_expected(official.report, get_entry(name).expected_dropped, name)
    for name in ("detr:hf-r50", "detr:hf-r101"):
        check_expected(hf.report, get_entry(name).expected_dropped, name)


@pytest.mark.parametrize(
    "key",
    [
        "transformer.decoder.layers.0.extra.weight",
        "backbone.0.body.layer1.0.bn1.num_batches_tracked",
        "aux.bias",
    ],
)
def test_an_unknown_official_key_fails_naming_it(official_state: dict[str, Tensor], key: str) -> None:
    with pytest.raises(KeyMappingError, match=re.escape(key)):
        convert_official({**official_state, key: torch.zeros(1)}, "tiny official")


def test_a_missing_key_fails_naming_it(
    hub_state: dict[str, Tensor], official_state: dict[str, Tensor]
) -> None:
    without = {k: v for k, v in official_state.items() if k != "transformer.decoder.layers.1.norm3.bias"}
    with pytest.raises(KeyMappingError, match=r"missing keys transformer\.decoder\.layers\.1\.norm3\.bias"):
        convert_official(without, "tiny official")
    without = {k: v for k, v in hub_state.items() if k != "model.decoder.layers.0.encoder_attn.k_proj.bias"}
    with pytest.raises(
        KeyMappingError, match=r"missing keys model\.decoder\.layers\.0\.encoder_attn\.k_proj\.bias"
    ):
        convert_hf(without, "tiny hf")


def test_an_unknown_hf_key_fails_naming_it(hub_state: dict[str, Tensor]) -> None:
    with pytest.raises(
        KeyMappingError, match=r"unmapped keys model\.position_embedding\.row_embeddings\.weight"
    ):
        convert_hf({**hub_state, "model.position_embedding.row_embeddings.weight": torch.zeros(1)}, "tiny hf")


def test_transformers_in_memory_names_are_refused_with_the_way_out(detr: DetrForObjectDetection) -> None:
    with pytest.raises(KeyMappingError, match="save_pretrained"):
        convert_hf(detr.state_dict(), "tiny hf in memory")
