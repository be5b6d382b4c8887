"""CNN grid embedder on a tiny random timm ResNet-18 (pretrained=False, 64-128 px): the token mask is
exactly the cells that hold real pixels, positions are DETR's sine of the real extent whatever the
padding, padded pixels never reach a token, frozen BatchNorm is frozen, checkpoints load strictly, and
it drops into ViLT (Pixel-BERT)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from conftest import TINY_VOCAB
from vlp.models.embedders import CNNGridEmbedder
from vlp.models.embedders.cnn_grid import sine_positions
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT

DIM = 32


def make_embedder(**kwargs: object) -> CNNGridEmbedder:
    """A random ResNet-18 grid embedder with its residual branches switched on: timm zero-initialises
    each block's last BatchNorm scale, which leaves a fresh ResNet a stem with a tiny receptive field."""
    embedder = CNNGridEmbedder(dim=DIM, backbone="resnet18", **kwargs)
    for module in embedder.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    return embedder


@pytest.fixture(scope="module")
def embedder() -> CNNGridEmbedder:
    torch.manual_seed(0)
    return make_embedder().eval()


def padded_batch(sizes: list[tuple[int, int]], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.randn(len(sizes), 3, height, width)
    mask = torch.zeros(len(sizes), height, width, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        mask[i, :h, :w] = True
    return pixels, mask


@pytest.mark.parametrize(
    ("height", "width", "sizes"),
    [
        (96, 128, [(96, 128), (40, 70), (64, 33), (1, 1)]),
        (70, 100, [(70, 100), (30, 100), (70, 64), (33, 31)]),
    ],
)
def test_token_mask_is_the_cells_that_hold_real_pixels(
    embedder: CNNGridEmbedder, height: int, width: int, sizes: list[tuple[int, int]]
) -> None:
    pixels, mask = padded_batch(sizes, height, width)
    with torch.no_grad():
        tokens = embedder(pixels, mask)
    rows, cols = math.ceil(height / 32), math.ceil(width / 32)
    assert tokens.grid == (rows, cols) and tokens.embeds.shape == (len(sizes), rows * cols, DIM)
    expected = torch.zeros(len(sizes), rows, cols, dtype=torch.bool)
    for b in range(len(sizes)):
        for i in range(rows):
            for j in range(cols):
                expected[b, i, j] = mask[b, 32 * i : 32 * i + 32, 32 * j : 32 * j + 32].any()
    assert tokens.mask.view(-1, rows, cols).tolist() == expected.tolist()
    if height == 70:
        # DETR's nearest resize samples pixel floor(1 * 70 / 3) = 23 for token row 1, real in a 30-px-high
        # image, though the row's cell (pixels 32-63) is all padding; the cell rule says padding.
        detr = F.interpolate(mask[:, None].float(), size=(rows, cols)).bool()[:, 0]
        assert detr[1, 1].all() and not tokens.mask.view(-1, rows, cols)[1, 1].any()


def test_positions_are_detr_sines_of_the_real_extent_whatever_the_padding(embedder: CNNGridEmbedder) -> None:
    image = torch.randn(1, 3, 64, 96)  # 2 x 3 tokens
    with torch.no_grad():
        alone = embedder(image)
        pixels, mask = padded_batch([(64, 96)], 128, 160)  # 4 x 5 tokens, the image in the top-left corner
        pixels[..., :64, :96] = image
        padded = embedder(pixels, mask)
    real = padded.pos.view(1, 4, 5, DIM)[:, :2, :3]
    torch.testing.assert_close(real, alone.pos.view(1, 2, 3, DIM))
    pos = alone.pos.view(2, 3, DIM)
    for i in range(2):
        for j in range(3):
            y, x = 2 * math.pi * (i + 1) / 2, 2 * math.pi * (j + 1) / 3
            # channel 0/1: sin/cos of y at frequency 1; channel D/2, D/2 + 1: the same for x
            expected = [math.sin(y), math.cos(y), math.sin(x), math.cos(x)]
            got = pos[i, j, [0, 1, DIM // 2, DIM // 2 + 1]].tolist()
            assert got == pytest.approx(expected, abs=1e-5)
    # the next pair of channels runs at frequency 10000 ** (-2 / (D / 2))
    frequency = 10000 ** (2 / (DIM // 2))
    assert pos[1, 0, 2].item() == pytest.approx(math.sin(2 * math.pi / frequency), abs=1e-6)


def test_sine_positions_count_real_tokens_only() -> None:
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, :2, :3] = True
    pos = sine_positions(mask, 8)
    torch.testing.assert_close(pos[0, :, :2, :3], sine_positions(torch.ones(1, 2, 3, dtype=torch.bool), 8)[0])


def test_what_the_padding_holds_never_reaches_a_token(embedder: CNNGridEmbedder) -> None:
    pixels, mask = padded_batch([(64, 64), (40, 90)], 96, 128)
    garbage = pixels.clone()
    garbage[~mask[:, None].expand_as(pixels)] = 50 * torch.randn(int((~mask).sum()) * 3)
    with torch.no_grad():
        clean = embedder(pixels, mask)
        dirty = embedder(garbage, mask)
        # the CNN's receptive field does cross into the padding: unmasked, the garbage leaks everywhere
        leak = embedder(garbage, None).embeds - embedder(pixels, None).embeds
    torch.testing.assert_close(dirty.embeds, clean.embeds)
    real = clean.mask
    assert leak.abs().amax(-1)[real].min() > 1e-2


def test_frozen_batchnorm_has_no_parameters_and_keeps_its_statistics() -> None:
    frozen = CNNGridEmbedder(dim=DIM, backbone="resnet18", freeze_bn=True).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert not [n for n, _ in frozen.named_parameters() if ".bn" in n or n.startswith("backbone.bn")]
    stats = {k: v.clone() for k, v in frozen.backbone.state_dict().items() if "running" in k}
    frozen(torch.randn(2, 3, 64, 64) * 3 + 1).embeds.sum().backward()
    assert all(torch.equal(frozen.backbone.state_dict()[k], v) for k, v in stats.items())
    assert frozen.backbone.conv1.weight.grad.abs().sum() > 0  # the convolutions still learn

    trainable = CNNGridEmbedder(dim=DIM, backbone="resnet18").train()
    before = trainable.backbone.bn1.running_mean.clone()
    trainable(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert not torch.equal(trainable.backbone.bn1.running_mean, before)


@pytest.mark.parametrize(
    ("name", "suffix"),
    [("resnet18", ".safetensors"), ("resnet18", ".pth"), ("convnext_atto", ".safetensors")],
)
def test_init_from_a_timm_checkpoint_round_trips(tmp_path: Path, name: str, suffix: str) -> None:
    torch.manual_seed(1)
    source = timm.create_model(name, pretrained=False)
    with torch.no_grad():  # non-trivial statistics, so the frozen copy has something to keep
        for module in source.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    path = tmp_path / f"{name}{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    torch.manual_seed(2)
    loaded = CNNGridEmbedder(dim=DIM, backbone=name, init_from=str(path), freeze_bn=True).eval()
    own = loaded.backbone.state_dict()
    assert own, "the backbone has weights"
    for key, value in own.items():
        full_key = key.replace("stages_", "stages.").replace("stem_", "stem.")
        torch.testing.assert_close(value, state[full_key], msg=key)
    # the features equal the source model's own last stage
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = source.eval().forward_intermediates(image, indices=1, intermediates_only=True)[-1]
        assert torch.allclose(loaded.backbone(image)[-1], reference, atol=1e-4, rtol=1e-4)


def test_init_from_a_wrong_file_fails_naming_the_keys(tmp_path: Path) -> None:
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "broken.safetensors"

    missing = {k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}
    save_file(missing, str(path))
    with pytest.raises(ValueError, match=r"missing \['layer2.0.conv1.weight'\]"):
        CNNGridEmbedder(dim=DIM, backbone="resnet18", init_from=str(path))

    extra = dict(state, **{"layer1.7.conv1.weight": torch.zeros(1)})
    save_file(extra, str(path))
    with pytest.raises(ValueError, match=r"unexpected \['layer1.7.conv1.weight'\]"):
        CNNGridEmbedder(dim=DIM, backbone="resnet18", init_from=str(path))

    wrong = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    save_file(wrong, str(path))
    with pytest.raises(ValueError, match=r"shape \['conv1.weight \(64, 3, 3, 3\)"):
        CNNGridEmbedder(dim=DIM, backbone="resnet18", init_from=str(path))

    # a ResNet-34 is no ResNet-18: its extra blocks are named
    save_file(timm.create_model("resnet34", pretrained=False).state_dict(), str(path))
    with pytest.raises(ValueError, match=r"unexpected.*layer1\.2"):
        CNNGridEmbedder(dim=DIM, backbone="resnet18", init_from=str(path))

    with pytest.raises(FileNotFoundError, match="init_from"):
        CNNGridEmbedder(dim=DIM, backbone="resnet18", init_from=str(tmp_path / "absent.pth"))


def test_bad_arguments_name_the_field(embedder: CNNGridEmbedder) -> None:
    with pytest.raises(ValueError, match="dim"):
        CNNGridEmbedder(dim=30, backbone="resnet18")
    with pytest.raises(ValueError, match="pixel_mask"):
        embedder(torch.randn(1, 3, 64, 64), torch.ones(1, 32, 64, dtype=torch.bool))


def test_plugs_into_vilt_as_pixel_bert() -> None:
    """ViLT with CNN grids instead of patches (Pixel-BERT): no change to either part."""
    model = ViLT(
        TextEmbedder(vocab_size=TINY_VOCAB, dim=DIM, max_len=16),
        make_embedder(),
        TransformerEncoder(dim=DIM, depth=2, num_heads=4),
    ).eval()
    ids, text_mask = torch.randint(5, TINY_VOCAB, (2, 6)), torch.ones(2, 6, dtype=torch.bool)
    pixels, mask = padded_batch([(64, 96), (40, 50)], 64, 96)
    out = model(ids, text_mask, pixels, mask)
    assert out.image_states.shape == (2, 6, DIM) and out.image_mask.sum(1).tolist() == [6, 4]
    garbage = pixels.clone()
    garbage[1, :, 40:, :] = 9.0
    torch.testing.assert_close(model(ids, text_mask, garbage, mask).pooled, out.pooled)
    other = model(ids, text_mask, torch.randn_like(pixels), mask).pooled
    assert (other - out.pooled).abs().amax(-1).min() > 1e-4  # the image does reach [CLS]
    model.train()
    model(ids, text_mask, pixels, mask).pooled.sum().backward()
    assert model.visual_embedder.backbone.layer4[1].conv2.weight.grad.abs().sum() > 0


def test_load_backbone_after_freezing_ignores_step_counters() -> None:
    source = timm.create_model("resnet18", pretrained=False)
    frozen = CNNGridEmbedder(dim=DIM, backbone="resnet18", freeze_bn=True)
    frozen.load_backbone(source.state_dict())  # has num_batches_tracked; frozen BatchNorm has no such buffer
    torch.testing.assert_close(frozen.backbone.bn1.running_var, source.bn1.running_var)
    torch.testing.assert_close(frozen.backbone.layer3[0].conv1.weight, source.layer3[0].conv1.weight)


def test_group_norm_normalises_each_images_tokens_over_their_positions() -> None:
    """``norm_groups`` (Deformable DETR's input_proj): per image and group of channels the tokens have
    mean 0 and variance 1 over positions (so their norm is about sqrt(dim), a LayerNorm'd word
    embedding's), whatever else the batch holds; a tiny projection's tokens are not."""
    torch.manual_seed(0)
    normed = make_embedder(out_index=2, norm_groups=8).eval()
    with torch.no_grad():
        normed.input_proj.weight.mul_(0.1)  # raw tokens far below unit scale
    pixels = torch.full((3, 3, 64, 64), -0.7)
    pixels[0, :, 20:32, 40:52] = 0.9  # one small bright square on a plain background
    pixels[1:] = torch.randn(2, 3, 64, 64)
    out = normed(pixels).embeds.detach()  # [B, 64 positions, DIM]
    groups = out.view(3, 64, 8, DIM // 8).transpose(1, 2).flatten(2)  # [B, groups, positions x channels]
    torch.testing.assert_close(groups.mean(-1), torch.zeros(3, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        groups.var(-1, unbiased=False), torch.ones(3, 8), atol=5e-2, rtol=0
    )  # up to eps (1e-5)
    assert out.norm(dim=-1).mean() == pytest.approx(math.sqrt(DIM), rel=0.05)
    normed.input_norm = None
    assert normed(pixels).embeds.norm(dim=-1).mean() < 0.2 * math.sqrt(DIM)
    normed.input_norm = nn.GroupNorm(8, DIM)
    torch.testing.assert_close(normed(pixels[:1]).embeds, out[:1])  # per image: the batch does not matter
    with pytest.raises(ValueError, match="norm_groups"):
        CNNGridEmbedder(dim=DIM, backbone="resnet18", norm_groups=5)
