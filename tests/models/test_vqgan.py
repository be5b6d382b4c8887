"""VQGAN: taming's key layout, the straight-through path, encode/decode round trips, checkpoints, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_vqgan
from vlp.models.vqgan.model import CONFIG_KEY, VQGAN

# taming's f8 model (ddconfig ch 128, ch_mult [1, 1, 2, 4], num_res_blocks 2, attn_resolutions [32],
# resolution 256, z_channels 256; n_embed 8192, embed_dim 256), keys of taming's VQModel without its loss.
TAMING_F8 = dict(
    resolution=256,
    ch=128,
    ch_mult=(1, 1, 2, 4),
    num_res_blocks=2,
    attn_resolutions=(32,),
    z_channels=256,
    num_codes=8192,
    code_dim=256,
)


def taming_f8_keys() -> set[str]:
    """The autoencoder keys of taming's ``VQModel`` for :data:`TAMING_F8`, derived from its code."""
    keys: set[str] = set()

    def conv(name: str) -> None:
        keys.update({f"{name}.weight", f"{name}.bias"})

    def resnet(name: str, shortcut: bool) -> None:
        for part in ("norm1", "conv1", "norm2", "conv2"):
            conv(f"{name}.{part}")
        if shortcut:
            conv(f"{name}.nin_shortcut")

    def attn(name: str) -> None:
        for part in ("norm", "q", "k", "v", "proj_out"):
            conv(f"{name}.{part}")

    mults = (1, 1, 2, 4)
    conv("encoder.conv_in")
    block_in = 128
    for level, mult in enumerate(mults):  # resolutions 256, 128, 64, 32
        for j in range(2):
            resnet(f"encoder.down.{level}.block.{j}", shortcut=block_in != 128 * mult)
            block_in = 128 * mult
            if level == 3:
                attn(f"encoder.down.{level}.attn.{j}")
        if level != 3:
            conv(f"encoder.down.{level}.downsample.conv")
    for side in ("encoder", "decoder"):
        resnet(f"{side}.mid.block_1", False)
        attn(f"{side}.mid.attn_1")
        resnet(f"{side}.mid.block_2", False)
        conv(f"{side}.norm_out")
        conv(f"{side}.conv_out")
    conv("decoder.conv_in")
    block_in = 512
    for level in reversed(range(4)):
        for j in range(3):
            resnet(f"decoder.up.{level}.block.{j}", shortcut=block_in != 128 * mults[level])
            block_in = 128 * mults[level]
            if level == 3:
                attn(f"decoder.up.{level}.attn.{j}")
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv")
    conv("quant_conv")
    conv("post_quant_conv")
    keys.add("quantize.embedding.weight")
    return keys


SPOT_CHECK = [
    "encoder.conv_in.weight",
    "encoder.down.0.block.0.norm1.weight",
    "encoder.down.0.block.1.conv2.bias",
    "encoder.down.0.downsample.conv.weight",
    "encoder.down.2.block.0.nin_shortcut.weight",
    "encoder.down.3.block.0.nin_shortcut.bias",
    "encoder.down.3.attn.0.q.weight",
    "encoder.down.3.attn.1.proj_out.bias",
    "encoder.mid.block_1.conv1.weight",
    "encoder.mid.attn_1.k.weight",
    "encoder.mid.block_2.norm2.bias",
    "encoder.norm_out.weight",
    "encoder.conv_out.weight",
    "quant_conv.weight",
    "quantize.embedding.weight",
    "post_quant_conv.bias",
    "decoder.conv_in.weight",
    "decoder.mid.attn_1.v.bias",
    "decoder.up.3.block.2.conv1.weight",
    "decoder.up.3.attn.2.norm.weight",
    "decoder.up.3.upsample.conv.weight",
    "decoder.up.2.block.0.nin_shortcut.weight",
    "decoder.up.1.block.0.nin_shortcut.weight",
    "decoder.up.0.block.2.norm2.weight",
    "decoder.norm_out.bias",
    "decoder.conv_out.weight",
]


def tiny_vqgan(**overrides: object) -> VQGAN:
    """conftest's tiny VQGAN, twice as wide, with 32 codes of 8 dimensions."""
    return make_tiny_vqgan(**{"ch": 16, "num_codes": 32, "code_dim": 8, **overrides})


def test_f8_config_has_tamings_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = VQGAN(**TAMING_F8)
    state = model.state_dict()
    assert set(state) == taming_f8_keys()
    assert all(key in state for key in SPOT_CHECK)
    assert state["quantize.embedding.weight"].shape == (8192, 256)
    assert state["encoder.down.2.block.0.nin_shortcut.weight"].shape == (256, 128, 1, 1)
    assert state["decoder.up.3.block.0.conv1.weight"].shape == (512, 512, 3, 3)
    assert state["decoder.conv_out.weight"].shape == (3, 128, 3, 3)
    assert model.grid == (32, 32) and model.downsample_factor == 8


def test_ema_codebook_keeps_the_key_and_adds_its_statistics() -> None:
    model = tiny_vqgan(ema=True)
    keys = set(model.state_dict())
    assert keys - set(tiny_vqgan().state_dict()) == {"quantize.cluster_size", "quantize.embed_avg"}
    assert "quantize.embedding.weight" in keys
    assert not any(p is model.quantize.embedding.weight for p in model.parameters())


def test_straight_through_gradient_reaches_the_encoder() -> None:
    model = tiny_vqgan()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    F.l1_loss(model(pixels).reconstruction, pixels).backward()
    for name in ("encoder.conv_in.weight", "encoder.down.0.block.0.conv1.weight", "quant_conv.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the reconstruction loss alone does not train the codebook (that is the codebook loss's job)
    assert model.quantize.embedding.weight.grad is None


def test_encode_decode_and_decode_ids_agree() -> None:
    model = tiny_vqgan().eval()
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    z_q, ids = model.encode(pixels)
    assert z_q.shape == (3, 8, 4, 4) and ids.shape == (3, 4, 4) and ids.dtype == torch.long
    torch.testing.assert_close(z_q, model.quantize.embedding.weight[ids].permute(0, 3, 1, 2))
    torch.testing.assert_close(model.decode_ids(ids), model.decode(z_q))
    torch.testing.assert_close(model(pixels).reconstruction, model.decode(z_q))
    # larger images than the training resolution work (attention placement is by level, not size)
    assert model.encode(torch.rand(1, 3, 32, 24))[1].shape == (1, 8, 6)


def test_bad_pixels_are_refused_naming_the_shape() -> None:
    model = tiny_vqgan()
    with pytest.raises(ValueError, match="divisible by f=4"):
        model(torch.rand(1, 3, 18, 16))
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        model.decode_ids(torch.zeros(1, 16, dtype=torch.long))


def test_overfits_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = tiny_vqgan(ema=True, dead_code_threshold=0.5)
    blocks = torch.rand(4, 3, 4, 4) * 2 - 1  # blocky images: each 4x4 cell one colour
    pixels = F.interpolate(blocks, scale_factor=4.0, mode="nearest")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(80):
        out = model(pixels)
        loss = F.l1_loss(out.reconstruction, pixels) + 0.25 * F.mse_loss(out.z_e, out.codes.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(F.l1_loss(out.reconstruction, pixels).item())
    assert losses[-1] < 0.5 * losses[0]


def test_from_checkpoint_round_trip_and_mismatch(tmp_path: Path) -> None:
    model = tiny_vqgan(ema=True, dead_code_threshold=0.1)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["discriminator.main.0.weight"] = torch.zeros(1)
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": state, CONFIG_KEY: model.config}, path)
    loaded = VQGAN.from_checkpoint(path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    state.pop("model.decoder.conv_out.bias")
    state["model.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state, CONFIG_KEY: model.config}, path)
    with pytest.raises(KeyError, match=r"missing \['decoder.conv_out.bias'\], unexpected \['extra.weight'\]"):
        VQGAN.from_checkpoint(path)
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="vqgan_config"):
        VQGAN.from_checkpoint(path)
