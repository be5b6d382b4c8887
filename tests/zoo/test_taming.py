"""taming-transformers VQGAN checkpoints (VQModel, GumbelVQ) → vlp's VQGAN, and back.

taming is not installed here, so the source side is :func:`taming_layout`: the key names and shapes of a
taming ``VQModel`` / ``GumbelVQ`` state dict, written from taming's code (``Encoder`` / ``Decoder`` of
``taming/modules/diffusionmodules/model.py``, ``VectorQuantizer2`` and ``GumbelQuantize`` of
``taming/modules/vqvae/quantize.py``, and the loss ``VQLPIPSWithDiscriminator``: LPIPS's VGG16 and linear
layers, the PatchGAN ``NLayerDiscriminator`` with BatchNorm), independently of vlp's modules.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import Tensor

from vlp.models.embedders import VQTokenEmbedder
from vlp.models.vqgan.gumbel import GumbelQuantizer, kl_to_uniform
from vlp.models.vqgan.model import CONFIG_KEY, VQGAN
from vlp.zoo.convert import converter
from vlp.zoo.converted import check_expected
from vlp.zoo.keys import KeyMappingError
from vlp.zoo.registry import get_entry
from vlp.zoo.taming import convert_gumbel, convert_vq, to_taming

Shapes = dict[str, tuple[int, ...]]

# The published first stages' ddconfig and quantizer sizes: imagenet f16 (configs/imagenet_vqgan.yaml of
# taming-transformers; the 16384 model differs in n_embed) and the OpenImages f8 Gumbel model (its
# configs/model.yaml: GumbelVQ, n_embed 8192, embed_dim 256, ch_mult [1, 1, 2, 4], attn_resolutions [32]).
F16 = dict(
    ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), resolution=256, z_channels=256
)
F8 = dict(
    ch=128, ch_mult=(1, 1, 2, 4), num_res_blocks=2, attn_resolutions=(32,), resolution=256, z_channels=256
)
PUBLISHED = {
    "vqgan:imagenet-f16-1024": dict(F16, embed_dim=256, n_embed=1024, gumbel=False),
    "vqgan:imagenet-f16-16384": dict(F16, embed_dim=256, n_embed=16384, gumbel=False),
    "vqgan:openimages-f8-8192-gumbel": dict(F8, embed_dim=256, n_embed=8192, gumbel=True),
}
# autoencoder parameters of the published models: the sums of taming_layout's non-loss shapes
PUBLISHED_PARAMS = {
    "vqgan:imagenet-f16-1024": 72_141_699,
    "vqgan:imagenet-f16-16384": 76_073_859,
    "vqgan:openimages-f8-8192-gumbel": 68_995_971,
}
# A small model with the published structure: three levels (a width change, so nin_shortcut), attention
# on the middle one only, GroupNorm(32)-compatible widths; z_channels == embed_dim as GumbelVQ needs.
TINY = dict(
    ch=32,
    ch_mult=(1, 1, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    resolution=16,
    z_channels=32,
    embed_dim=32,
)


def taming_layout(
    *,
    ch: int,
    ch_mult: tuple[int, ...],
    num_res_blocks: int,
    attn_resolutions: tuple[int, ...],
    resolution: int,
    z_channels: int,
    embed_dim: int,
    n_embed: int,
    gumbel: bool,
    in_channels: int = 3,
    out_ch: int = 3,
    disc_layers: int = 3,
    ndf: int = 64,
) -> Shapes:
    """Key → shape of a taming ``VQModel`` (``gumbel=False``) or ``GumbelVQ`` Lightning ``state_dict``."""
    shapes: Shapes = {}

    def conv(name: str, c_in: int, c_out: int, k: int, bias: bool = True) -> None:
        shapes[f"{name}.weight"] = (c_out, c_in, k, k)
        if bias:
            shapes[f"{name}.bias"] = (c_out,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

    def resnet(name: str, c_in: int, c_out: int) -> None:
        norm(f"{name}.norm1", c_in)
        conv(f"{name}.conv1", c_in, c_out, 3)
        norm(f"{name}.norm2", c_out)
        conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            conv(f"{name}.nin_shortcut", c_in, c_out, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    def mid(side: str, c: int) -> None:
        resnet(f"{side}.mid.block_1", c, c)
        attn(f"{side}.mid.attn_1", c)
        resnet(f"{side}.mid.block_2", c, c)

    levels = len(ch_mult)
    conv("encoder.conv_in", in_channels, ch, 3)
    in_mult = (1, *ch_mult)
    res = resolution
    for i in range(levels):
        block_in = ch * in_mult[i]
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
            if res in attn_resolutions:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    mid("encoder", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", block_in, z_channels, 3)

    block_in = ch * ch_mult[-1]
    res = resolution // 2 ** (levels - 1)
    conv("decoder.conv_in", z_channels, block_in, 3)
    mid("decoder", block_in)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
            if res in attn_resolutions:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", block_in, out_ch, 3)

    conv("quant_conv", z_channels, embed_dim, 1)
    conv("post_quant_conv", embed_dim, z_channels, 1)
    if gumbel:
        conv("quantize.proj", z_channels, n_embed, 1)  # GumbelQuantize(num_hiddens=z_channels, ...)
        shapes["quantize.embed.weight"] = (n_embed, embed_dim)
    else:
        shapes["quantize.embedding.weight"] = (n_embed, embed_dim)

    # loss.perceptual_loss: LPIPS (VGG16 features in five slices, then 1x1 linear layers after dropout)
    lpips = "loss.perceptual_loss"
    shapes[f"{lpips}.scaling_layer.shift"] = shapes[f"{lpips}.scaling_layer.scale"] = (1, 3, 1, 1)
    vgg = {1: [(0, 3, 64), (2, 64, 64)], 2: [(5, 64, 128), (7, 128, 128)]}
    vgg[3] = [(10, 128, 256), (12, 256, 256), (14, 256, 256)]
    vgg[4] = [(17, 256, 512), (19, 512, 512), (21, 512, 512)]
    vgg[5] = [(24, 512, 512), (26, 512, 512), (28, 512, 512)]
    for slice_, layers in vgg.items():
        for index, c_in, c_out in layers:
            conv(f"{lpips}.net.slice{slice_}.{index}", c_in, c_out, 3)
    for k, c in enumerate((64, 128, 256, 512, 512)):
        conv(f"{lpips}.lin{k}.model.1", c, 1, 1, bias=False)

    # loss.discriminator: NLayerDiscriminator (BatchNorm, so its convs but the first and last have no bias)
    def batch_norm(name: str, c: int) -> None:
        norm(name, c)
        shapes[f"{name}.running_mean"] = shapes[f"{name}.running_var"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    disc = "loss.discriminator.main"
    conv(f"{disc}.0", in_channels, ndf, 4)
    index, mult = 2, 1
    for n in range(1, disc_layers + 1):
        previous, mult = mult, min(2**n, 8)
        conv(f"{disc}.{index}", ndf * previous, ndf * mult, 4, bias=False)
        batch_norm(f"{disc}.{index + 1}", ndf * mult)
        index += 3
    conv(f"{disc}.{index}", ndf * mult, 1, 4)
    return shapes


def materialise(shapes: Shapes, seed: int = 0) -> dict[str, Tensor]:
    """Random autoencoder tensors; the loss's on the meta device (its VGG alone is 14.7M numbers, and
    the converter drops it without reading it)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.empty(shape, device="meta")
        if key.startswith("loss.")
        else torch.randn(shape, generator=generator) * 0.1
        for key, shape in shapes.items()
    }


def on_meta(shapes: Shapes) -> dict[str, Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def build(model_config: dict[str, Any]) -> VQGAN:
    """The model ``model_config`` describes, built by jsonargparse as a recipe's ``model:`` would be."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=VQGAN)
    return parser.instantiate_classes(parser.parse_object({"model": model_config})).model


def model_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key.removeprefix("model."): value for key, value in state.items()}


@pytest.fixture(scope="module")
def tiny_vq() -> dict[str, Tensor]:
    return materialise(taming_layout(**TINY, n_embed=16, gumbel=False))


@pytest.fixture(scope="module")
def tiny_gumbel() -> dict[str, Tensor]:
    return materialise(taming_layout(**TINY, n_embed=16, gumbel=True), seed=1)


def test_registry_converters_are_these() -> None:
    assert converter(get_entry("vqgan:imagenet-f16-1024").converter) is convert_vq
    assert converter(get_entry("vqgan:openimages-f8-8192-gumbel").converter) is convert_gumbel


def test_vqmodel_converts_builds_and_loads_strictly(tiny_vq: dict[str, Tensor]) -> None:
    converted = convert_vq(tiny_vq, "tiny VQModel", resolution=16)
    assert converted.model_config == {
        "class_path": "vlp.models.vqgan.model.VQGAN",
        "init_args": {
            "resolution": 16,
            "ch": 32,
            "ch_mult": [1, 1, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [8],
            "z_channels": 32,
            "num_codes": 16,
            "code_dim": 32,
            "in_channels": 3,
            "out_channels": 3,
            "dropout": 0.0,
            "norm_groups": 32,
        },
    }
    model = build(converted.model_config)
    model.load_state_dict(model_keys(converted.state), strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_vq[key]), key
    report = converted.report
    assert report.dropped == sorted(key for key in tiny_vq if key.startswith("loss."))
    assert any(key.startswith("loss.perceptual_loss.") for key in report.dropped)
    assert "loss.discriminator.main.3.num_batches_tracked" in report.dropped
    assert sorted(report.loaded) == sorted(converted.state) and report.adapted == {}
    for name in ("vqgan:imagenet-f16-1024", "vqgan:imagenet-f16-16384"):
        check_expected(report, get_entry(name).expected_dropped, name)


def test_gumbelvq_converts_renaming_the_codebook(tiny_gumbel: dict[str, Tensor]) -> None:
    converted = convert_gumbel(tiny_gumbel, "tiny GumbelVQ", resolution=16)
    assert converted.model_config["init_args"]["quantizer"] == "gumbel"
    model = build(converted.model_config)
    assert isinstance(model.quantize, GumbelQuantizer)
    model.load_state_dict(model_keys(converted.state), strict=True)
    assert torch.equal(model.quantize.embedding.weight, tiny_gumbel["quantize.embed.weight"])
    assert torch.equal(model.quantize.proj.weight, tiny_gumbel["quantize.proj.weight"])
    report = converted.report
    assert list(report.adapted) == ["model.quantize.embedding.weight"]
    assert "quantize.embed.weight" in report.adapted["model.quantize.embedding.weight"]
    assert len(report.loaded) + 1 == len(converted.state)
    check_expected(report, get_entry("vqgan:openimages-f8-8192-gumbel").expected_dropped, "gumbel")


@pytest.mark.parametrize("gumbel", [False, True])
def test_export_to_taming_round_trips_exactly(
    gumbel: bool, tiny_vq: dict[str, Tensor], tiny_gumbel: dict[str, Tensor]
) -> None:
    source = tiny_gumbel if gumbel else tiny_vq
    converted = (convert_gumbel if gumbel else convert_vq)(source, "tiny", resolution=16)
    exported = to_taming(converted.state, converted.model_config)
    autoencoder = {key: value for key, value in source.items() if not key.startswith("loss.")}
    assert set(exported) == set(autoencoder)
    assert all(torch.equal(exported[key], value) for key, value in autoencoder.items())
    # and from a freshly built model's own state dict (what a fine-tuned vlp VQGAN exports)
    model = build(converted.model_config)
    own = {f"model.{key}": value for key, value in model.state_dict().items()}
    back = to_taming(own, converted.model_config)
    assert {key: tuple(value.shape) for key, value in back.items()} == {
        key: tuple(value.shape) for key, value in autoencoder.items()
    }


def test_an_ema_codebook_has_no_place_in_taming() -> None:
    model = VQGAN(**{**vlp_tiny_args(), "ema": True})
    config = {"class_path": "vlp.models.vqgan.model.VQGAN", "init_args": {**vlp_tiny_args(), "ema": True}}
    with pytest.raises(KeyMappingError, match=r"no place for keys model\.quantize\.cluster_size"):
        to_taming({f"model.{k}": v for k, v in model.state_dict().items()}, config)


def vlp_tiny_args() -> dict[str, Any]:
    return dict(
        resolution=16,
        ch=32,
        ch_mult=[1, 1, 2],
        num_res_blocks=1,
        attn_resolutions=[8],
        z_channels=32,
        num_codes=16,
        code_dim=32,
        norm_groups=32,
    )


def test_unknown_and_missing_keys_fail_naming_them(tiny_vq: dict[str, Tensor]) -> None:
    extra = dict(tiny_vq, **{"quantize.extra_buffer": torch.zeros(2)})
    with pytest.raises(KeyMappingError, match=r"unmapped keys quantize\.extra_buffer"):
        convert_vq(extra, "extra", resolution=16)
    missing = {key: value for key, value in tiny_vq.items() if key != "decoder.up.1.attn.0.q.bias"}
    with pytest.raises(KeyMappingError, match=r"missing keys decoder\.up\.1\.attn\.0\.q\.bias"):
        convert_vq(missing, "missing", resolution=16)
    wrong = dict(tiny_vq, **{"decoder.conv_in.bias": torch.zeros(7)})
    with pytest.raises(KeyMappingError, match=r"decoder\.conv_in\.bias: \(7,\) vs \(64,\)"):
        convert_vq(wrong, "wrong shape", resolution=16)


def test_the_wrong_converter_says_which_one_to_use(
    tiny_vq: dict[str, Tensor], tiny_gumbel: dict[str, Tensor]
) -> None:
    with pytest.raises(KeyMappingError, match=r"a VQModel checkpoint; use vqgan-taming \(convert_vq\)"):
        convert_gumbel(tiny_vq, "vq as gumbel", resolution=16)
    with pytest.raises(KeyMappingError, match=r"a GumbelVQ checkpoint; use vqgan-taming-gumbel"):
        convert_vq(tiny_gumbel, "gumbel as vq", resolution=16)


def test_what_vlp_cannot_represent_fails_naming_it() -> None:
    double_z = taming_layout(**TINY, n_embed=16, gumbel=False)
    double_z["encoder.conv_out.weight"] = (64, 64, 3, 3)
    double_z["encoder.conv_out.bias"] = (64,)
    with pytest.raises(KeyMappingError, match="double_z=True"):
        convert_vq(on_meta(double_z), "double_z", resolution=16)
    pooled = {
        key: s for key, s in taming_layout(**TINY, n_embed=16, gumbel=False).items() if "sample" not in key
    }
    with pytest.raises(KeyMappingError, match="resamp_with_conv=False"):
        convert_vq(on_meta(pooled), "pooled", resolution=16)
    shortcut = taming_layout(**TINY, n_embed=16, gumbel=False)
    shortcut["encoder.down.2.block.0.conv_shortcut.weight"] = (64, 32, 3, 3)
    with pytest.raises(
        KeyMappingError, match=r"conv_shortcut=True.*encoder\.down\.2\.block\.0\.conv_shortcut"
    ):
        convert_vq(on_meta(shortcut), "shortcut", resolution=16)
    lopsided = taming_layout(**TINY, n_embed=16, gumbel=False)
    lopsided = {key: s for key, s in lopsided.items() if ".up.1.attn." not in key}
    with pytest.raises(KeyMappingError, match=r"encoder levels \[1\] but decoder levels \[\]"):
        convert_vq(on_meta(lopsided), "lopsided", resolution=16)
    narrow = taming_layout(**{**TINY, "embed_dim": 16}, n_embed=16, gumbel=True)
    with pytest.raises(KeyMappingError, match=r"quantize\.proj reads 32 channels but the codes are 16 wide"):
        convert_gumbel(on_meta(narrow), "narrow", resolution=16)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_sizes_build_on_meta_with_their_parameter_count(name: str) -> None:
    sizes = dict(PUBLISHED[name])
    gumbel = sizes["gumbel"]
    shapes = taming_layout(**sizes)
    converted = (convert_gumbel if gumbel else convert_vq)(on_meta(shapes), name)
    args = converted.model_config["init_args"]
    assert (args["ch"], args["ch_mult"], args["num_res_blocks"]) == (128, list(sizes["ch_mult"]), 2)
    assert (args["attn_resolutions"], args["resolution"]) == (list(sizes["attn_resolutions"]), 256)
    assert (args["z_channels"], args["code_dim"], args["num_codes"]) == (256, 256, sizes["n_embed"])
    assert args.get("quantizer", "vector") == ("gumbel" if gumbel else "vector")
    with torch.device("meta"):
        model = build(converted.model_config)
    model.load_state_dict(model_keys(converted.state), strict=True, assign=True)
    params = sum(p.numel() for p in model.parameters())
    autoencoder = sum(math.prod(s) for key, s in shapes.items() if not key.startswith("loss."))
    assert params == autoencoder == PUBLISHED_PARAMS[name]
    assert model.grid == ((16, 16) if "f16" in name else (32, 32))
    check_expected(converted.report, get_entry(name).expected_dropped, name)


def test_gumbel_vqgan_tokenizes_by_the_argmax_of_its_logits(tiny_gumbel: dict[str, Tensor]) -> None:
    converted = convert_gumbel(tiny_gumbel, "tiny GumbelVQ", resolution=16)
    model = build(converted.model_config)
    model.load_state_dict(model_keys(converted.state), strict=True)
    model.eval()
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        z_q, ids = model.encode(pixels)
        logits = model.quantize.proj(model.quant_conv(model.encoder(pixels)))
        assert ids.shape == (2, 4, 4) and torch.equal(ids, logits.argmax(dim=1))
        assert torch.equal(z_q, model.quantize.embedding.weight[ids].permute(0, 3, 1, 2))
        assert torch.equal(model.decode_ids(ids), model.decode(z_q))
        out = model(pixels)
        assert torch.equal(out.ids, ids) and torch.equal(out.reconstruction, model.decode(z_q))
        assert out.kl is not None and out.kl.ndim == 0
        # the tokenizer path: the token embedder reads the codebook under the vector quantizer's name
        embedder = VQTokenEmbedder(model, dim=8, init_embeddings_from_codebook=True)
        codes = embedder.codes(pixels)
        assert torch.equal(codes, ids.flatten(1))
        assert torch.equal(embedder.decode(codes), model.decode_ids(ids))


def test_gumbel_argmax_equals_a_hand_computation() -> None:
    # integer weights and inputs: every logit is an exact integer in fp32, whatever the summation order
    quantizer = GumbelQuantizer(num_codes=6, code_dim=4).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        quantizer.proj.weight.copy_(torch.randint(-3, 4, (6, 4, 1, 1), generator=generator).float())
        quantizer.proj.bias.copy_(torch.randint(-2, 3, (6,), generator=generator).float())
        quantizer.embedding.weight.copy_(torch.arange(24.0).view(6, 4))
    z = torch.randint(-4, 5, (2, 4, 3, 3), generator=generator).float()
    out = quantizer(z)
    weight = quantizer.proj.weight.view(6, 4)
    for b in range(2):
        for y in range(3):
            for x in range(3):
                logits = [
                    sum(weight[n, c] * z[b, c, y, x] for c in range(4)) + quantizer.proj.bias[n]
                    for n in range(6)
                ]
                best = max(range(6), key=lambda n: logits[n])
                assert sorted(logits)[-2] < logits[best]  # no tie: the argmax is unambiguous
                assert out.ids[b, y, x] == best
                assert torch.equal(out.z_q[b, :, y, x], torch.arange(24.0).view(6, 4)[best])
    assert torch.equal(out.codes, out.z_q) and out.z_e is z


def test_gumbel_training_samples_straight_through_with_a_kl_term() -> None:
    torch.manual_seed(0)
    quantizer = GumbelQuantizer(num_codes=8, code_dim=4, temperature=0.5).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = quantizer(z)
    assert out.ids.shape == (2, 3, 3) and out.ids.dtype == torch.long
    # hard forward value: the sampled codes (1 - s + s may round one ulp off 1)
    torch.testing.assert_close(out.z_q, out.codes, rtol=1e-6, atol=1e-6)
    out.z_q.square().sum().backward()
    for parameter in (quantizer.proj.weight, quantizer.embedding.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert z.grad is not None and z.grad.abs().sum() > 0
    # KL(q || uniform) = Σ q log(q N), averaged over positions (tolerance: summation order)
    logits = quantizer.proj(z).detach()
    q = logits.softmax(dim=1)
    torch.testing.assert_close(out.kl, (q * (q * 8).log()).sum(dim=1).mean(), rtol=1e-5, atol=1e-6)
    assert abs(kl_to_uniform(torch.zeros(1, 8, 2, 2)).item()) < 1e-6  # uniform logits: no divergence


def test_gumbel_soft_samples_without_straight_through() -> None:
    torch.manual_seed(1)
    quantizer = GumbelQuantizer(num_codes=4, code_dim=4, straight_through=False).train()
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.eye(4))  # then z_q is the sample itself
    out = quantizer(torch.randn(3, 4, 2, 2))
    assert (out.z_q >= 0).all() and not torch.equal(out.z_q, out.codes)
    torch.testing.assert_close(out.z_q.sum(dim=1), torch.ones(3, 2, 2))  # tolerance: a sum of softmax terms
    assert torch.equal(out.ids, out.z_q.argmax(dim=1))


def test_vqgan_quantizer_choice(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ema and dead_code_threshold belong to the vector quantizer"):
        VQGAN(**vlp_tiny_args(), quantizer="gumbel", ema=True)
    with pytest.raises(ValueError, match="quantizer must be 'vector' or 'gumbel'"):
        VQGAN(**vlp_tiny_args(), quantizer="nearest")  # type: ignore[arg-type]
    vector = VQGAN(**vlp_tiny_args())
    assert vector.train()(torch.rand(1, 3, 16, 16)).kl is None
    gumbel = VQGAN(**vlp_tiny_args(), quantizer="gumbel", gumbel_temperature=0.7)
    assert set(gumbel.state_dict()) - set(vector.state_dict()) == {
        "quantize.proj.weight",
        "quantize.proj.bias",
    }
    assert set(vector.state_dict()) <= set(gumbel.state_dict())
    assert gumbel.quantize.temperature == 0.7 and gumbel.train()(torch.rand(1, 3, 16, 16)).kl is not None
    path = tmp_path / "gumbel.ckpt"
    state = {f"model.{key}": value for key, value in gumbel.state_dict().items()}
    torch.save({"state_dict": state, CONFIG_KEY: gumbel.config}, path)
    loaded = VQGAN.from_checkpoint(path)
    assert isinstance(loaded.quantize, GumbelQuantizer) and loaded.quantize.temperature == 0.7
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in gumbel.state_dict().items())
