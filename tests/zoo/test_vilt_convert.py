"""ViLT weights between transformers, official ViLT and vlp: the same numbers, every key accounted for.

Tiny random models only (hidden 32, 2 layers, 4 heads, 64 px images, patch 16); nothing is downloaded.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from transformers import (
    ViltConfig,
    ViltForImageAndTextRetrieval,
    ViltForImagesAndTextClassification,
    ViltForMaskedLM,
    ViltForQuestionAnswering,
    ViltModel,
)
from zoo_fixtures import ATOL, GRID, PATCH, SIDE

from vlp.checkpoints import read_state_dict
from vlp.cli import main
from vlp.models.outputs import FusionOutput
from vlp.models.vilt import ViLT
from vlp.objectives.itm import ITMObjective
from vlp.objectives.mlm import MLMObjective
from vlp.tasks.pretrain import PretrainTask
from vlp.zoo.files import read_hf_folder, write_state_dict
from vlp.zoo.keys import KeyMappingError
from vlp.zoo.vilt import ViLTWeights, hf_to_vlp, official_to_vlp, vlp_to_hf, vlp_to_official
from vlp.zoo.vilt_build import (
    config_from_model,
    head_from_config,
    load_hf_folder,
    load_official_checkpoint,
    load_vilt,
    vilt_from_config,
)

BATCH, TEXT_LEN, VOCAB = 3, 10, 60


def tiny_config(**overrides: object) -> ViltConfig:
    sizes = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "image_size": SIDE,
        "patch_size": PATCH,
        "max_position_embeddings": 12,
        "max_image_length": -1,
        "num_labels": 5,
    }
    return ViltConfig(**{**sizes, **overrides})


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random, LayerNorm scales around 1: a wrongly mapped tensor cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm_scale = param.dim() == 1 and name.endswith("weight") and "norm" in name.lower()
            is_norm_scale |= name.startswith("classifier.1.weight")
            param.copy_(1 + 0.3 * noise if is_norm_scale else 0.2 * noise)
    return module.eval()


def make_inputs(seed: int = 1) -> dict[str, Tensor]:
    """Padded text (lengths 10, 6, 3) and padded images (real 64x64, 48x32, 32x64: whole patches)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (BATCH, TEXT_LEN), generator=generator)
    text_mask = torch.ones(BATCH, TEXT_LEN, dtype=torch.long)
    text_mask[1, 6:] = 0
    text_mask[2, 3:] = 0
    pixels = torch.randn(BATCH, 3, SIDE, SIDE, generator=generator)
    pixel_mask = torch.zeros(BATCH, SIDE, SIDE, dtype=torch.long)
    pixel_mask[0] = 1
    pixel_mask[1, :48, :32] = 1
    pixel_mask[2, :32, :] = 1
    return {"input_ids": ids, "attention_mask": text_mask, "pixel_values": pixels, "pixel_mask": pixel_mask}


def run_vlp(model: ViLT, batch: dict[str, Tensor], image_token_type: int = 1) -> FusionOutput:
    return model(
        batch["input_ids"],
        batch["attention_mask"].bool(),
        batch["pixel_values"],
        batch["pixel_mask"].bool(),
        image_token_type=image_token_type,
    )


def hf_image_order(hf: ViltModel, batch: dict[str, Tensor], seed: int) -> tuple[Tensor, Tensor]:
    """Which patch each of HF's image tokens is, and whether it is real.

    HF's ``visual_embed`` keeps the real patches of an image in row-major order, puts the image with
    the most real patches in a random order (``torch.multinomial`` over all of them) and pads the
    others with random padding patches. Run with the same seed, it makes the same draws as the forward
    pass; the returned index is into vlp's image tokens ([CLS] then the full grid, row-major).
    """
    torch.manual_seed(seed)
    _, mask, (patch_index, _) = hf.embeddings.visual_embed(
        batch["pixel_values"], batch["pixel_mask"], max_image_length=-1
    )
    index = 1 + patch_index[..., 0] * GRID + patch_index[..., 1]
    return torch.cat([torch.zeros(BATCH, 1, dtype=torch.long), index], 1), mask.bool()


def assert_close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def assert_same_fusion(hf: ViltModel, model: ViLT, batch: dict[str, Tensor]) -> None:
    """HF's and vlp's text states, pooled output and (real) image states agree within ATOL."""
    index, real = hf_image_order(hf, batch, seed=7)
    torch.manual_seed(7)
    expected = hf(**batch)
    ours = run_vlp(model, batch)
    assert_close(ours.text_states, expected.last_hidden_state[:, :TEXT_LEN])
    assert_close(ours.pooled, expected.pooler_output)
    image = ours.image_states.gather(1, index[..., None].expand(-1, -1, ours.image_states.shape[-1]))
    assert_close(image[real], expected.last_hidden_state[:, TEXT_LEN:][real])
    assert real.sum(1).tolist() == ours.image_mask.sum(1).tolist() == [17, 7, 9]
    assert ours.image_mask.gather(1, index)[real].all()


HEAD_CASES: dict[str, tuple[type[nn.Module], dict[str, object]]] = {
    "mlm": (ViltForMaskedLM, {}),
    "vqa": (ViltForQuestionAnswering, {}),
    "nlvr2": (ViltForImagesAndTextClassification, {"num_images": 2, "modality_type_vocab_size": 3}),
    "rank": (ViltForImageAndTextRetrieval, {}),
}


def hf_logits(hf: nn.Module, head: str, batch: dict[str, Tensor]) -> Tensor:
    if head == "nlvr2":
        second = {"pixel_values": batch["pixel_values"].flip(-1), "pixel_mask": batch["pixel_mask"]}
        pair = {k: torch.stack([batch[k], second[k]], 1) for k in second}
        return hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **pair).logits
    return hf(**batch).logits


def vlp_logits(model: ViLT, heads: dict[str, nn.Module], head: str, batch: dict[str, Tensor]) -> Tensor:
    if head == "mlm":
        return heads["mlm"](run_vlp(model, batch).text_states)
    if head == "nlvr2":
        second = {**batch, "pixel_values": batch["pixel_values"].flip(-1)}
        pooled = [run_vlp(model, batch, 1).pooled, run_vlp(model, second, 2).pooled]
        return heads["nlvr2"](torch.cat(pooled, -1))
    return heads[head](run_vlp(model, batch).pooled).view(BATCH, -1)  # RankHead gives [B], HF [B, 1]


# ------------------------------------------------------------------------------------ HF → vlp


def test_hf_vilt_model_converts_to_the_same_hidden_states() -> None:
    config = tiny_config()
    hf = randomize(ViltModel(config))
    weights = hf_to_vlp(hf.state_dict())
    assert weights.heads == {}
    model, heads = load_vilt(weights, config)
    assert heads == {}
    with torch.no_grad():
        assert_same_fusion(hf, model.eval(), make_inputs())


@pytest.mark.parametrize("head", list(HEAD_CASES))
def test_hf_heads_convert_to_the_same_logits(head: str) -> None:
    cls, overrides = HEAD_CASES[head]
    config = tiny_config(**overrides)
    hf = randomize(cls(config))
    weights = hf_to_vlp(hf.state_dict())
    assert sorted(weights.heads) == [head]
    model, heads = load_vilt(weights, config)
    batch = make_inputs()
    with torch.no_grad():
        expected, ours = hf_logits(hf, head, batch), vlp_logits(model.eval(), heads, head, batch)
        assert_same_fusion(hf.vilt, model, batch)
    assert_close(ours, expected)
    assert ours.shape == expected.shape
    assert expected.abs().max() > 0.1  # not a degenerate all-zero comparison


def test_hf_masked_lm_saved_without_its_tied_decoder_takes_the_word_embeddings() -> None:
    config = tiny_config()
    hf = randomize(ViltForMaskedLM(config))
    state = hf.state_dict()
    del state["mlm_score.decoder.weight"]  # tied: save_pretrained may leave it out
    weights = hf_to_vlp(state)
    torch.testing.assert_close(
        weights.heads["mlm"]["decoder.weight"],
        state["vilt.embeddings.text_embeddings.word_embeddings.weight"],
    )
    model, heads = load_vilt(weights, config)
    batch = make_inputs()
    with torch.no_grad():
        assert_close(vlp_logits(model, heads, "mlm", batch), hf(**batch).logits)


def test_transformers_4_masked_lm_state_dict_with_its_second_bias_name_converts() -> None:
    """transformers 4.x's ViltMLMHead registered the decoder bias twice: mlm_score.bias is decoder.bias."""
    state = randomize(ViltForMaskedLM(tiny_config())).state_dict()
    state["mlm_score.bias"] = state["mlm_score.decoder.bias"].clone()
    state["vilt.embeddings.text_embeddings.position_ids"] = torch.arange(12)[None]  # persistent in 4.x
    weights = hf_to_vlp(state)
    assert torch.equal(weights.heads["mlm"]["bias"], state["mlm_score.bias"])
    state["mlm_score.bias"] = state["mlm_score.bias"] + 1
    with pytest.raises(ValueError, match=r"mlm_score\.bias and mlm_score\.decoder\.bias differ"):
        hf_to_vlp(state)


# ------------------------------------------------------------------------------------ vlp → HF


def vlp_model_with_head(head: str | None, config: ViltConfig) -> tuple[ViLT, dict[str, nn.Module]]:
    """A vlp model and head built and initialised by vlp (not converted from HF), then randomised."""
    model = randomize(vilt_from_config(config), seed=3)
    heads = {head: randomize(head_from_config(head, config), seed=4)} if head else {}
    if head == "mlm":  # transformers ties the MLM decoder to the word embeddings
        with torch.no_grad():
            heads["mlm"].decoder.weight.copy_(model.text_embedder.word_embeddings.weight)
    return model, heads


@pytest.mark.parametrize("head", [None, *HEAD_CASES])
def test_vlp_export_loads_strictly_into_transformers_with_the_same_outputs(head: str | None) -> None:
    cls, overrides = HEAD_CASES[head] if head else (ViltModel, {})
    model, heads = vlp_model_with_head(head, tiny_config(**overrides))
    config = config_from_model(model, heads)
    assert config.architectures == [cls.__name__]
    weights = ViLTWeights(model.state_dict(), {name: h.state_dict() for name, h in heads.items()})
    hf = cls(config).eval()
    hf.load_state_dict(vlp_to_hf(weights), strict=True)
    batch = make_inputs()
    with torch.no_grad():
        assert_same_fusion(hf if head is None else hf.vilt, model, batch)
        if head:
            assert_close(vlp_logits(model, heads, head, batch), hf_logits(hf, head, batch))


@pytest.mark.parametrize("head", [None, *HEAD_CASES])
def test_hf_to_vlp_to_hf_is_exact(head: str | None) -> None:
    cls, overrides = HEAD_CASES[head] if head else (ViltModel, {})
    state = randomize(cls(tiny_config(**overrides))).state_dict()
    back = vlp_to_hf(hf_to_vlp(state))
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[key], state[key]) for key in state)


def test_hf_export_refuses_what_transformers_cannot_hold() -> None:
    model, heads = vlp_model_with_head("mlm", tiny_config())
    weights = ViLTWeights(
        model.state_dict(),
        {
            "mlm": heads["mlm"].state_dict(),
            "itm": randomize(head_from_config("itm", tiny_config())).state_dict(),
        },
    )
    with pytest.raises(KeyMappingError, match="no ITM head"):
        vlp_to_hf(weights)
    vqa = randomize(head_from_config("vqa", tiny_config())).state_dict()
    with pytest.raises(KeyMappingError, match="one head"):
        vlp_to_hf(ViLTWeights(weights.model, {"mlm": weights.heads["mlm"], "vqa": vqa}))
    untied = {**weights.heads["mlm"], "decoder.weight": weights.heads["mlm"]["decoder.weight"] + 1}
    with pytest.raises(ValueError, match="not tied"):
        vlp_to_hf(ViLTWeights(weights.model, {"mlm": untied}))
    assert set(vlp_to_hf(weights.only("mlm"))) >= {"mlm_score.decoder.bias", "vilt.layernorm.weight"}


# ------------------------------------------------------------------------------------ official


def official_from_hf(seed: int = 0) -> tuple[dict[str, Tensor], ViltConfig, ViltForMaskedLM]:
    """An official-layout state dict (model + MLM + ITM heads) made through the converters."""
    config = tiny_config()
    hf = randomize(ViltForMaskedLM(config), seed)
    itm = randomize(head_from_config("itm", config), seed + 1).state_dict()
    weights = hf_to_vlp(hf.state_dict())
    official = vlp_to_official(ViLTWeights(weights.model, {**weights.heads, "itm": itm}))
    return official, config, hf


def test_official_layout_has_the_official_key_names() -> None:
    official, _, _ = official_from_hf()
    assert {
        "text_embeddings.word_embeddings.weight",
        "text_embeddings.LayerNorm.bias",
        "text_embeddings.position_ids",
        "token_type_embeddings.weight",
        "transformer.patch_embed.proj.weight",
        "transformer.cls_token",
        "transformer.pos_embed",
        "transformer.blocks.1.attn.qkv.weight",
        "transformer.blocks.1.mlp.fc2.bias",
        "transformer.norm.weight",
        "pooler.dense.weight",
        "mlm_score.transform.LayerNorm.weight",
        "mlm_score.decoder.weight",
        "mlm_score.bias",
        "itm_score.fc.weight",
    } <= set(official)
    assert official["transformer.blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert torch.equal(official["text_embeddings.position_ids"], torch.arange(12)[None])


def test_official_round_trips_are_exact_and_compute_what_hf_computes() -> None:
    official, config, hf = official_from_hf()
    weights = official_to_vlp(official)
    assert sorted(weights.heads) == ["itm", "mlm"]
    again = vlp_to_official(weights)
    assert sorted(again) == sorted(official)
    assert all(torch.equal(again[key], official[key]) for key in official)
    # the same tensors as the HF model's, so the same numbers as HF
    model, heads = load_vilt(weights, config)
    batch = make_inputs()
    with torch.no_grad():
        assert_same_fusion(hf.vilt, model, batch)
        assert_close(vlp_logits(model, heads, "mlm", batch), hf(**batch).logits)
    # official ViLT's timm blocks use LayerNorm eps 1e-6 rather than HF's 1e-12: a negligible change
    official_model, _ = load_vilt(weights, config, encoder_norm_eps=1e-6)
    assert official_model.encoder.norm.eps == 1e-6
    with torch.no_grad():
        torch.testing.assert_close(
            run_vlp(official_model, batch).pooled, run_vlp(model, batch).pooled, atol=1e-4, rtol=0
        )


LAYOUTS: dict[str, Callable[[dict[str, Tensor]], ViLTWeights]] = {
    "official": official_to_vlp,
    "hf": hf_to_vlp,
}


def layout_state(layout: str) -> dict[str, Tensor]:
    if layout == "official":
        return official_from_hf()[0]
    return randomize(ViltForMaskedLM(tiny_config())).state_dict()


@pytest.mark.parametrize(
    ("layout", "extra"),
    [
        ("official", "transformer.blocks.0.attn.relative_bias"),
        ("official", "mpp_score.decoder.weight"),
        ("hf", "vilt.encoder.layer.1.attention.attention.extra.weight"),
        ("hf", "classifier.weight"),
    ],
)
def test_an_unknown_key_fails_naming_it(layout: str, extra: str) -> None:
    state = layout_state(layout)
    state[extra] = torch.zeros(3)
    with pytest.raises(KeyMappingError, match=f"unmapped keys.*{extra}"):
        LAYOUTS[layout](state)


@pytest.mark.parametrize(
    ("layout", "gone"),
    [
        ("official", "transformer.blocks.1.mlp.fc2.bias"),
        ("official", "mlm_score.bias"),
        ("hf", "vilt.encoder.layer.0.attention.attention.key.weight"),
        ("hf", "vilt.pooler.dense.bias"),
    ],
)
def test_a_missing_key_fails_naming_it(layout: str, gone: str) -> None:
    state = layout_state(layout)
    del state[gone]
    with pytest.raises(KeyMappingError, match=f"missing keys.*{gone}"):
        LAYOUTS[layout](state)


def test_export_fails_naming_model_keys_the_layout_has_no_place_for() -> None:
    model, heads = vlp_model_with_head("mlm", tiny_config())
    state = {**model.state_dict(), "visual_embedder.backbone.conv1.weight": torch.zeros(1)}
    for export in (vlp_to_hf, vlp_to_official):
        with pytest.raises(
            KeyMappingError, match=r"no place for keys model\.visual_embedder\.backbone\.conv1\.weight"
        ):
            export(ViLTWeights(state, {"mlm": heads["mlm"].state_dict()}))
    del state["visual_embedder.backbone.conv1.weight"], state["encoder.blocks.1.norm2.weight"]
    with pytest.raises(KeyMappingError, match=r"missing keys model\.encoder\.blocks\.1\.norm2\.weight"):
        vlp_to_official(ViLTWeights(state))


def test_text_position_buffers_must_hold_the_default_positions() -> None:
    official, _, _ = official_from_hf()
    official_to_vlp(official)  # position_ids 0..11 is known and consumed
    official["text_embeddings.position_ids"] = torch.arange(12).flip(0)[None]
    with pytest.raises(ValueError, match=r"text_embeddings\.position_ids is not the default"):
        official_to_vlp(official)


def test_a_size_that_disagrees_with_the_config_is_named() -> None:
    weights = hf_to_vlp(randomize(ViltModel(tiny_config())).state_dict())
    with pytest.raises(
        KeyMappingError, match=r"(?s)model: .*size mismatch for text_embedder\.position_embeddings\.weight"
    ):
        load_vilt(weights, tiny_config(max_position_embeddings=20))


# ------------------------------------------------------------------------------------ into a task


def test_converted_weights_load_strictly_into_a_pretrain_task() -> None:
    official, config, _ = official_from_hf()
    weights = official_to_vlp(official)
    task = PretrainTask(
        model=randomize(vilt_from_config(config), seed=9),
        objectives={
            "mlm": MLMObjective(head_from_config("mlm", config)),
            "itm": ITMObjective(head_from_config("itm", config)),
        },
    )
    task.load_state_dict(weights.task_state_dict(), strict=True)
    assert torch.equal(task.objectives["itm"].head.fc.weight, official["itm_score.fc.weight"])
    back = ViLTWeights.from_task_state_dict(task.state_dict())
    assert vlp_to_official(back).keys() == official.keys()
    renamed = weights.task_state_dict({"itm": "match"})
    assert "objectives.match.head.fc.weight" in renamed and "objectives.itm.head.fc.weight" not in renamed
    assert sorted(ViLTWeights.from_task_state_dict(renamed, {"itm": "match"}).heads) == ["itm", "mlm"]
    with pytest.raises(KeyMappingError, match=r"objectives\.wpa\.scale"):
        ViLTWeights.from_task_state_dict({**task.state_dict(), "objectives.wpa.scale": torch.ones(1)})


# ------------------------------------------------------------------------------------ files and CLI


def test_official_ckpt_pickling_training_objects_still_reads_with_weights_only(tmp_path: Path) -> None:
    """A Lightning 1.x checkpoint (as official ViLT's): hyper-parameters in an AttributeDict, callback states
    keyed by the callback's class. They load as inert stand-ins; a class of an unknown module is refused."""
    from argparse import Namespace

    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint
    from pytorch_lightning.utilities.parsing import AttributeDict

    official, _, _ = official_from_hf()
    checkpoint = {
        "epoch": 3,
        "state_dict": official,
        "hyper_parameters": AttributeDict(config={"hidden_size": 32, "loss_names": {"mlm": 1}}),
        "callbacks": {ModelCheckpoint: {"best_model_path": str(tmp_path), "best_score": torch.ones(())}},
        "args": Namespace(out=tmp_path),
    }
    torch.save(checkpoint, tmp_path / "vilt.ckpt")
    with pytest.raises(Exception, match="AttributeDict"):
        torch.load(tmp_path / "vilt.ckpt", weights_only=True)
    state = read_state_dict(tmp_path / "vilt.ckpt")
    assert state.keys() == official.keys()
    assert all(torch.equal(state[key], official[key]) for key in official)
    model, heads, config = load_official_checkpoint(tmp_path / "vilt.ckpt", num_attention_heads=4)
    assert sorted(heads) == ["itm", "mlm"] and config.num_attention_heads == 4
    assert model.encoder.blocks[0].norm1.eps == 1e-6 and model.text_embedder.norm.eps == 1e-12
    assert torch.equal(heads["itm"].fc.weight, official["itm_score.fc.weight"])

    module = types.ModuleType("old_lightning_utils")

    class Unknown:
        pass

    Unknown.__module__, Unknown.__qualname__ = module.__name__, "Unknown"
    module.Unknown = Unknown  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        torch.save({**checkpoint, "args": Unknown()}, tmp_path / "unknown.ckpt")
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(ValueError, match=r"unknown\.ckpt: refused.*\['old_lightning_utils\.Unknown'\]"):
        read_state_dict(tmp_path / "unknown.ckpt")
    assert "old_lightning_utils" not in sys.modules  # nothing of it was imported or rebuilt


def test_a_file_that_is_not_a_state_dict_is_refused_naming_it(tmp_path: Path) -> None:
    torch.save({"state_dict": {"a": torch.ones(1), "b": [1, 2]}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"bad\.ckpt.*not named tensors: \['b'\]"):
        read_state_dict(tmp_path / "bad.ckpt")


def convert(source: str, target: str, src: Path, dst: Path, *options: str) -> None:
    main(["zoo", "convert-vilt", "--from", source, "--to", target, *options, str(src), str(dst)])


def test_cli_converts_hf_to_vlp_to_official_and_back_to_hf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = randomize(ViltForMaskedLM(tiny_config()))
    hf.save_pretrained(tmp_path / "hf")
    convert("hf", "vlp", tmp_path / "hf", tmp_path / "vlp.safetensors")
    convert("vlp", "official", tmp_path / "vlp.safetensors", tmp_path / "official.ckpt")
    convert("official", "vlp", tmp_path / "official.ckpt", tmp_path / "vlp2.pt")
    convert("vlp", "hf", tmp_path / "vlp2.pt", tmp_path / "hf2", "--num-heads", "4")
    official = torch.load(tmp_path / "official.ckpt", weights_only=True)["state_dict"]
    assert "transformer.blocks.1.attn.qkv.weight" in official
    _, config = read_hf_folder(tmp_path / "hf2")
    assert config.architectures == ["ViltForMaskedLM"] and config.num_attention_heads == 4
    again = ViltForMaskedLM.from_pretrained(tmp_path / "hf2").eval()
    model, heads, _ = load_hf_folder(tmp_path / "hf")  # save_pretrained left out the tied decoder
    batch = make_inputs()
    with torch.no_grad():
        assert_close(again(**batch).logits, hf(**batch).logits)
        assert_close(vlp_logits(model.eval(), heads, "mlm", batch), hf(**batch).logits)
    write_state_dict({"x": torch.ones(1)}, tmp_path / "junk.pt")
    with pytest.raises(SystemExit) as exit_info:  # a user error: one line, exit status 2 (vlp.errors)
        convert("vlp", "hf", tmp_path / "junk.pt", tmp_path / "out")
    assert exit_info.value.code == 2
    assert "junk.pt: unmapped keys ['x']" in capsys.readouterr().err
