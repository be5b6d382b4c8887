"""timm weights as vlp parts: a timm ViT as ViLT's patch embedder + encoder, a timm ResNet as the CNN
grid's backbone. The same numbers both ways, every source key used or listed as dropped.

Tiny random models built by timm itself (``pretrained=False``); nothing is downloaded. Every parameter
and BatchNorm statistic is randomised first, so a swapped or missed key changes the outputs.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from zoo_fixtures import ATOL, GRID, PATCH, SIDE

from vlp.models.embedders.cnn_grid import CNNGridEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.zoo.converted import check_expected
from vlp.zoo.keys import KeyMappingError
from vlp.zoo.registry import ENTRIES, get_entry
from vlp.zoo.timm_weights import (
    backbone_state,
    convert_resnet,
    convert_vit,
    interpolate_positions,
    vit_to_timm,
)

DIM, DEPTH, HEADS = 32, 2, 4
TIMM_VIT_ENTRIES = [name for name, entry in ENTRIES.items() if entry.converter == "timm-vit"]
TIMM_RESNET_ENTRIES = [name for name, entry in ENTRIES.items() if entry.converter == "timm-resnet"]


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BatchNorm statistic random (norm scales and variances near 1), in eval mode;
    ``[1, N, D]`` tables ([CLS], positions) get std ``1/sqrt(N·D)``, small beside the patch tokens."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(1.0 + 0.5 * noise.abs())
            elif tensor.dim() == 1 and ("norm" in name or "bn" in name) and name.endswith("weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            elif tensor.dim() > 1:  # std 1/sqrt(fan in): activations stay O(1) through the depth
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
            else:
                tensor.copy_(0.1 * noise)
    return module.eval()


def timm_vit(seed: int = 0, num_classes: int = 10, qkv_bias: bool = True) -> VisionTransformer:
    vit = VisionTransformer(
        img_size=SIDE,
        patch_size=PATCH,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        num_classes=num_classes,
        qkv_bias=qkv_bias,
    )
    return randomise(vit, seed)


def vlp_vit(qkv_bias: bool = True) -> tuple[ViTPatchEmbedder, TransformerEncoder]:
    """ViLT's visual parts at the tiny ViT's sizes (LayerNorm eps 1e-6 in both)."""
    embedder = ViTPatchEmbedder(dim=DIM, patch_size=PATCH, pos_grid=GRID)
    encoder = TransformerEncoder(dim=DIM, depth=DEPTH, num_heads=HEADS, qkv_bias=qkv_bias, norm_eps=1e-6)
    return embedder.eval(), encoder.eval()


def load_parts(state: dict[str, Tensor], embedder: nn.Module, encoder: nn.Module) -> None:
    """``model.visual_embedder.*`` / ``model.encoder.*`` keys into the two modules, strictly."""
    for prefix, module in (("model.visual_embedder.", embedder), ("model.encoder.", encoder)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)


def vlp_tokens(embedder: ViTPatchEmbedder, encoder: TransformerEncoder, pixels: Tensor) -> Tensor:
    """What ViLT's encoder computes for image tokens alone: positions added once, then the blocks."""
    visual = embedder(pixels)
    return encoder(visual.embeds + visual.pos)


def pixels(seed: int = 1, side: int = SIDE) -> Tensor:
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- ViT


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_vit_outputs_equal_timm_forward_features(qkv_bias: bool) -> None:
    vit = timm_vit(qkv_bias=qkv_bias)
    converted = convert_vit(vit.state_dict(), "tiny timm ViT")
    embedder, encoder = vlp_vit(qkv_bias=qkv_bias)
    load_parts(converted.state, embedder, encoder)
    x = pixels()
    with torch.no_grad():
        expected = vit.forward_features(x)
        got = vlp_tokens(embedder, encoder, x)
    assert got.shape == expected.shape == (2, 1 + GRID * GRID, DIM)
    assert (got - expected).abs().max().item() <= ATOL


def test_vit_to_timm_outputs_equal_vlp() -> None:
    embedder, encoder = vlp_vit()
    randomise(embedder, 3)
    randomise(encoder, 4)
    state = {f"model.visual_embedder.{k}": v for k, v in embedder.state_dict().items()}
    state |= {f"model.encoder.{k}": v for k, v in encoder.state_dict().items()}
    vit = timm_vit(num_classes=0)
    vit.load_state_dict(vit_to_timm(state), strict=True)
    x = pixels(5)
    with torch.no_grad():
        assert (vit.forward_features(x) - vlp_tokens(embedder, encoder, x)).abs().max().item() <= ATOL
    back = convert_vit(vit_to_timm(state), "exported").state
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_vit_keys_are_vilts_and_the_report_lists_the_head() -> None:
    vit = timm_vit()
    converted = convert_vit(vit.state_dict(), "tiny timm ViT")
    vilt = ViLT(TextEmbedder(vocab_size=30, dim=DIM, max_len=8), *vlp_vit())
    own = {f"model.{k}": v for k, v in vilt.state_dict().items()}
    visual = {k for k in own if k.startswith(("model.visual_embedder.", "model.encoder."))}
    assert set(converted.state) == visual
    assert all(converted.state[k].shape == own[k].shape for k in visual)
    report = converted.report
    assert converted.model_config is None
    assert report.dropped == ["head.bias", "head.weight"]
    assert report.adapted == {}
    assert sorted(report.loaded) == sorted(converted.state)
    assert len(report.loaded) + len(report.dropped) == len(vit.state_dict())
    assert TIMM_VIT_ENTRIES
    for name in TIMM_VIT_ENTRIES:
        check_expected(report, get_entry(name).expected_dropped, name)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"blocks.0.ls1.gamma": torch.ones(DIM)}, "blocks.0.ls1.gamma"),
        ({"norm_pre.weight": torch.ones(DIM)}, "norm_pre.weight"),
        ({"reg_token": torch.zeros(1, 4, DIM)}, "reg_token"),
    ],
)
def test_vit_unknown_key_fails_naming_it(extra: dict[str, Tensor], named: str) -> None:
    state = timm_vit().state_dict() | extra
    with pytest.raises(KeyMappingError, match=f"unmapped keys.*{named}"):
        convert_vit(state, "odd ViT")


def test_vit_missing_key_fails_naming_it() -> None:
    state = timm_vit().state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    with pytest.raises(KeyMappingError, match=r"missing keys.*blocks\.1\.mlp\.fc2\.bias"):
        convert_vit(state, "cut ViT")


def test_vit_positions_must_be_cls_and_a_square_grid() -> None:
    state = timm_vit().state_dict()
    state["pos_embed"] = state["pos_embed"][:, 1:]  # no [CLS] position: 16 rows, 15 is no square
    with pytest.raises(ValueError, match="not \\[CLS\\] \\+ a square grid"):
        convert_vit(state, "no-class-position ViT")


def test_interpolate_positions_keeps_cls_and_matches_the_embedders_init_path() -> None:
    pos = timm_vit().state_dict()["pos_embed"]
    assert interpolate_positions(pos, GRID) is pos
    for grid in (6, 2):
        resampled = interpolate_positions(pos, grid)
        assert resampled.shape == (1, 1 + grid * grid, DIM)
        assert torch.equal(resampled[:, :1], pos[:, :1])
        # ViTPatchEmbedder(init_from=...) resamples a timm table to its pos_grid: the same numbers
        embedder = ViTPatchEmbedder(dim=DIM, patch_size=PATCH, pos_grid=grid)
        embedder.load_vit_embedding(timm_vit().state_dict())
        assert torch.equal(embedder.pos_embed.detach(), resampled)


def test_interpolate_positions_is_bicubic_in_row_major_order() -> None:
    """Bicubic weights sum to 1: a constant table stays constant and a table that varies along x only
    (row-major, as timm lays out the grid) keeps its rows equal, up to fp32 rounding; a transposed
    reshape would mix x into y. The kernel is timm's default: PyTorch's antialiased bicubic (PIL's)."""
    constant = torch.full((1, 1 + GRID * GRID, DIM), 0.25)
    for grid in (7, 3):
        assert (interpolate_positions(constant, grid) - 0.25).abs().max().item() <= 1e-6
    ramp = torch.arange(GRID, dtype=torch.float).repeat(GRID)  # value = column index
    table = torch.cat([torch.tensor([-1.0]), ramp])[None, :, None].expand(1, -1, 2).contiguous()
    out = interpolate_positions(table, 8)[0, 1:, 0].view(8, 8)
    assert (out - out[:1]).abs().max().item() <= 1e-6  # y weights sum to 1 up to fp32 rounding
    assert torch.all(out[0, 1:] > out[0, :-1])
    grid = table[:, 1:].view(1, GRID, GRID, 2).permute(0, 3, 1, 2)
    bicubic = F.interpolate(grid, size=(8, 8), mode="bicubic", antialias=True)
    assert torch.equal(interpolate_positions(table, 8)[0, 1:], bicubic[0].permute(1, 2, 0).reshape(64, 2))


def test_interpolate_positions_refuses_bad_tables() -> None:
    with pytest.raises(ValueError, match="square grid"):
        interpolate_positions(torch.zeros(1, 11, DIM), 4)
    with pytest.raises(ValueError, match="positive"):
        interpolate_positions(torch.zeros(1, 17, DIM), 0)


# ---------------------------------------------------------------------------------------- ResNet


def timm_resnet(name: str, seed: int = 7) -> nn.Module:
    return randomise(timm.create_model(name, pretrained=False, num_classes=5), seed)


@pytest.mark.parametrize("name", ["resnet18", "resnet10t"])
def test_resnet_backbone_features_equal_timm(name: str) -> None:
    resnet = timm_resnet(name)
    converted = convert_resnet(resnet.state_dict(), f"tiny timm {name}")
    embedder = CNNGridEmbedder(dim=32, backbone=name).eval()
    embedder.backbone.load_state_dict(backbone_state(converted), strict=True)
    x = pixels(side=64)
    with torch.no_grad():
        expected = resnet.forward_features(x)
        got = embedder.backbone(x)[-1]
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= ATOL
    assert converted.model_config is None
    assert converted.report.dropped == ["fc.bias", "fc.weight"]
    assert all(k.startswith("model.visual_embedder.backbone.") for k in converted.state)
    for entry in TIMM_RESNET_ENTRIES:
        check_expected(converted.report, get_entry(entry).expected_dropped, entry)


def test_resnet_earlier_stage_drops_the_later_ones() -> None:
    resnet = timm_resnet("resnet18")
    converted = convert_resnet(resnet.state_dict(), "tiny timm resnet18", out_index=2)
    embedder = CNNGridEmbedder(dim=32, backbone="resnet18", out_index=2).eval()
    embedder.backbone.load_state_dict(backbone_state(converted), strict=True)
    x = pixels(side=64)
    with torch.no_grad():
        (expected,) = resnet.forward_intermediates(x, indices=[2], intermediates_only=True)
        got = embedder.backbone(x)[-1]
    assert got.shape == expected.shape == (2, 128, 8, 8)
    assert (got - expected).abs().max().item() <= ATOL
    dropped = converted.report.dropped
    assert {k.split(".")[0] for k in dropped} == {"fc", "layer3", "layer4"}
    assert len(dropped) + len(converted.state) == len(resnet.state_dict())
    assert convert_resnet(resnet.state_dict(), "r18", out_index=-3).state.keys() == converted.state.keys()


def test_resnet_refuses_unknown_keys_and_levels() -> None:
    state = timm_resnet("resnet18").state_dict()
    with pytest.raises(KeyMappingError, match=r"unmapped keys.*attnpool\.q\.weight"):
        convert_resnet(state | {"attnpool.q.weight": torch.zeros(2, 2)}, "odd ResNet")
    with pytest.raises(ValueError, match="out_index 5 is not a feature level"):
        convert_resnet(state, "resnet18", out_index=5)
    del state["bn1.weight"], state["bn1.bias"], state["bn1.running_mean"], state["bn1.running_var"]
    del state["bn1.num_batches_tracked"]
    with pytest.raises(KeyMappingError, match=r"missing the ResNet modules \['bn1'\]"):
        convert_resnet(state, "stemless ResNet")


# ---------------------------------------------------------------------------------------- registry sizes


@pytest.mark.parametrize("name", TIMM_VIT_ENTRIES + TIMM_RESNET_ENTRIES)
def test_registry_architectures_convert_to_the_vlp_parts(name: str) -> None:
    """Each timm entry's own architecture, at full size on the meta device (shapes, no numbers): the
    converted keys are exactly the vlp part's, with its shapes, and only the expected keys drop."""
    entry = get_entry(name)
    arch = entry.tag
    with torch.device("meta"):
        source = timm.create_model(arch, pretrained=False)
        if entry.converter == "timm-vit":
            converted = convert_vit(source.state_dict(), name)
            embedder = ViTPatchEmbedder(dim=768, patch_size=32, pos_grid=12)
            encoder = TransformerEncoder(dim=768, depth=12, num_heads=12)
            own = {f"model.visual_embedder.{k}": v for k, v in embedder.state_dict().items()}
            own |= {f"model.encoder.{k}": v for k, v in encoder.state_dict().items()}
        else:
            converted = convert_resnet(source.state_dict(), name)
            embedder = CNNGridEmbedder(dim=256, backbone=arch)
            own = {
                f"model.visual_embedder.backbone.{k}": v for k, v in embedder.backbone.state_dict().items()
            }
    assert converted.state.keys() == own.keys()
    assert all(converted.state[k].shape == own[k].shape for k in own)
    check_expected(converted.report, entry.expected_dropped, name)
