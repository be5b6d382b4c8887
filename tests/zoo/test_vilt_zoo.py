"""The zoo's ViLT converters (weights, model config, report) and exports to the official and Hugging Face
layouts: the head count read from the source, and what those layouts cannot hold refused before writing.

The key maps themselves are tested in test_vilt_convert.py; tiny random models only, nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from test_pretrained import make_task, model_config, task_config, write_run
from test_vilt_convert import (
    assert_close,
    assert_same_fusion,
    convert,
    make_inputs,
    randomize,
    run_vlp,
    tiny_config,
    vlp_logits,
)
from transformers import ViltConfig, ViltForMaskedLM, ViltModel

from vlp.objectives.itm import ITMObjective
from vlp.objectives.mlm import MLMObjective
from vlp.tasks.pretrain import PretrainTask
from vlp.zoo.convert import converter
from vlp.zoo.pretrained import build_module, save_pretrained
from vlp.zoo.vilt import ViLTWeights, hf_to_vlp, vlp_to_official
from vlp.zoo.vilt_build import head_from_config, vilt_from_config
from vlp.zoo.vilt_convert import (
    LAYOUT_NAMES,
    convert_hf,
    convert_official,
    export_problems,
    vilt_model_config,
)

B32_SHAPED = {"hidden_size": 48, "num_attention_heads": 12, "intermediate_size": 96}  # 12 heads, as B/32


def build_loaded(model_config: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The model ``model_config`` builds, the ``model.*`` keys of ``state`` loaded strictly."""
    model = build_module(model_config, "converted model")
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}, strict=True
    )
    return model.eval()


def heads_of(state: dict[str, torch.Tensor], config: ViltConfig) -> dict[str, torch.nn.Module]:
    heads = {}
    for name in ("mlm", "itm"):
        prefix = f"objectives.{name}.head."
        if any(key.startswith(prefix) for key in state):
            heads[name] = head_from_config(name, config).eval()
            heads[name].load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
    return heads


# ------------------------------------------------------------------------------------------ converters


def test_the_registry_names_these_converters() -> None:
    assert converter("vilt-official") is convert_official and converter("vilt-hf") is convert_hf


@pytest.mark.parametrize("cls", [ViltModel, ViltForMaskedLM])
def test_convert_hf_gives_task_keys_a_model_config_that_loads_strictly_and_a_full_report(cls: type) -> None:
    config = tiny_config(**B32_SHAPED)
    hf = randomize(cls(config))
    state = hf.state_dict()
    if cls is ViltForMaskedLM:
        del state["mlm_score.decoder.weight"]  # tied: save_pretrained may leave it out
    converted = convert_hf(state, "tiny hf")
    expected_keys = {"model." + k for k in vilt_from_config(config).state_dict()}
    if cls is ViltForMaskedLM:
        expected_keys |= {"objectives.mlm.head." + k for k in head_from_config("mlm", config).state_dict()}
    assert set(converted.state) == expected_keys
    report = converted.report
    qkv = {f"model.encoder.blocks.{i}.attn.qkv.{p}" for i in range(2) for p in ("weight", "bias")}
    tied = {"objectives.mlm.head.decoder.weight"} if cls is ViltForMaskedLM else set()
    assert set(report.adapted) == qkv | tied and report.dropped == [] and report.source == "tiny hf"
    assert set(report.loaded) == expected_keys - qkv - tied
    prefix = "vilt." if cls is ViltForMaskedLM else ""
    assert report.adapted["model.encoder.blocks.1.attn.qkv.bias"] == (
        f"{prefix}encoder.layer.1.attention.attention.{{query,key,value}}.bias concatenated along dim 0"
    )
    encoder = converted.model_config["init_args"]["encoder"]["init_args"]
    assert encoder["num_heads"] == 12 and encoder["norm_eps"] == 1e-12
    model = build_loaded(converted.model_config, converted.state)
    batch = make_inputs()
    with torch.no_grad():
        assert_same_fusion(hf if cls is ViltModel else hf.vilt, model, batch)
        if cls is ViltForMaskedLM:
            assert_close(
                vlp_logits(model, heads_of(converted.state, config), "mlm", batch), hf(**batch).logits
            )


def official_state(seed: int = 0) -> tuple[dict[str, torch.Tensor], ViltConfig, ViltForMaskedLM]:
    """An official-layout state dict (model, MLM and ITM heads) of a ViLT with 12 heads."""
    config = tiny_config(**B32_SHAPED)
    hf = randomize(ViltForMaskedLM(config), seed)
    weights = hf_to_vlp(hf.state_dict())
    itm = randomize(head_from_config("itm", config), seed + 1).state_dict()
    return vlp_to_official(ViLTWeights(weights.model, {**weights.heads, "itm": itm})), config, hf


def test_convert_official_computes_what_official_vilt_computes() -> None:
    """Official ViLT's blocks use LayerNorm eps 1e-6 and its BERT parts 1e-12: the HF model given the same
    eps per LayerNorm computes what official ViLT does, and the converted model must match it."""
    official, config, hf = official_state()
    converted = convert_official(official, "tiny official")
    assert converted.report.adapted == {} and converted.report.dropped == []
    assert sorted(converted.report.loaded) == sorted(converted.state)
    init = converted.model_config["init_args"]
    assert (
        init["encoder"]["init_args"]["norm_eps"] == 1e-6
        and init["text_embedder"]["init_args"]["norm_eps"] == 1e-12
    )
    model = build_loaded(converted.model_config, converted.state)
    assert model.encoder.blocks[0].norm1.eps == 1e-6 and model.text_embedder.norm.eps == 1e-12
    for layer in hf.vilt.encoder.layer:
        layer.layernorm_before.eps = layer.layernorm_after.eps = 1e-6
    hf.vilt.layernorm.eps = 1e-6
    batch = make_inputs()
    with torch.no_grad():
        assert_same_fusion(hf.vilt, model, batch)
        assert_close(vlp_logits(model, heads_of(converted.state, config), "mlm", batch), hf(**batch).logits)
    task = PretrainTask(  # the keys are a task's: they load strictly into one built from the model config
        model=build_module(converted.model_config, "task model"),
        objectives={
            "mlm": MLMObjective(head_from_config("mlm", config)),
            "itm": ITMObjective(head_from_config("itm", config)),
        },
    )
    task.load_state_dict(converted.state, strict=True)
    assert torch.equal(task.objectives["itm"].head.fc.weight, official["itm_score.fc.weight"])


def test_a_width_that_twelve_heads_do_not_split_is_not_a_b32() -> None:
    with pytest.raises(ValueError, match="width 32 does not split into ViLT-B/32's 12 attention heads"):
        convert_hf(randomize(ViltModel(tiny_config())).state_dict(), "tiny hf")


@pytest.mark.parametrize(
    ("overrides", "encoder_eps"),
    [({}, None), ({"qkv_bias": False, "modality_type_vocab_size": 3, "max_image_length": 5}, 1e-6)],
)
def test_the_model_config_builds_what_vilt_from_config_builds(
    overrides: dict[str, Any], encoder_eps: Any
) -> None:
    config = tiny_config(hidden_dropout_prob=0.1, **overrides)
    built = build_module(vilt_model_config(config, encoder_norm_eps=encoder_eps), "model config")
    reference = vilt_from_config(config, encoder_norm_eps=encoder_eps)
    assert repr(built) == repr(reference)  # every module, size, eps and dropout rate
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    visual = (built.visual_embedder, reference.visual_embedder)
    assert {(v.max_image_len, v.sample_at_eval) for v in visual} == {
        (config.max_image_length, config.max_image_length > 0)
    }
    built.load_state_dict(randomize(reference).state_dict())
    pooled = []
    for model in (built.eval(), reference):
        torch.manual_seed(3)  # the same patches sampled on both sides (max_image_length 5 samples in eval)
        with torch.no_grad():
            pooled.append(run_vlp(model, make_inputs()).pooled)
    assert torch.equal(*pooled)


# ------------------------------------------------------------------------------------------ exports


def refused(
    capsys: pytest.CaptureFixture[str], source: str, target: str, src: Path, dst: Path, *options: str
) -> str:
    """Run a conversion that must fail as a user error (status 2) before writing; its message."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        convert(source, target, src, dst, *options)
    assert exit_info.value.code == 2
    assert not dst.exists()
    return capsys.readouterr().err


def test_a_run_exports_to_hf_with_the_head_count_of_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run, task = write_run(tmp_path, model_config(pre_norm=False, encoder_eps=1e-12), tie_decoder=True)
    convert("vlp", "hf", run, tmp_path / "hf", "--heads", "mlm")
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert written["num_attention_heads"] == 4 and written["architectures"] == ["ViltForMaskedLM"]
    assert written["layer_norm_eps"] == 1e-12 and written["max_image_length"] == -1
    hf = ViltForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    batch = make_inputs()
    heads = {"mlm": task.objectives["mlm"].head.eval()}
    with torch.no_grad():
        assert_same_fusion(hf.vilt, task.model.eval(), batch)
        assert_close(vlp_logits(task.model, heads, "mlm", batch), hf(**batch).logits)
    folder = save_pretrained(run, tmp_path / "pretrained")  # a pretrained folder says it too
    convert("vlp", "hf", folder, tmp_path / "hf2", "--heads", "mlm")
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["num_attention_heads"] == 4


def test_an_official_checkpoint_gives_the_head_count_of_its_training_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    official, _, hf = official_state()
    torch.save(
        {"state_dict": official, "hyper_parameters": {"config": {"num_heads": 12}}}, tmp_path / "o.ckpt"
    )
    convert("official", "hf", tmp_path / "o.ckpt", tmp_path / "hf", "--heads", "mlm")
    again = ViltForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert again.config.num_attention_heads == 12
    batch = make_inputs()
    with torch.no_grad():
        assert_close(again(**batch).logits, hf.eval()(**batch).logits)


def test_the_head_count_is_required_and_must_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, task = write_run(tmp_path, model_config(pre_norm=False), tie_decoder=True)
    save_file(task.state_dict(), tmp_path / "bare.safetensors")  # a state dict alone: no config with it
    dst = tmp_path / "hf"
    error = refused(capsys, "vlp", "hf", tmp_path / "bare.safetensors", dst, "--heads", "mlm")
    assert "does not say how many attention heads" in error and "--num-heads N" in error
    error = refused(capsys, "vlp", "hf", run, dst, "--heads", "mlm", "--num-heads", "8")
    assert "--num-heads 8 disagrees with" in error and "num_heads = 4" in error
    error = refused(
        capsys, "vlp", "hf", tmp_path / "bare.safetensors", dst, "--heads", "mlm", "--num-heads", "5"
    )
    assert "the width 32 does not split into 5 attention heads" in error
    error = refused(capsys, "vlp", "hf", run, dst)
    assert "carry one head each and none for ITM" in error and "--heads" in error
    convert("vlp", "hf", tmp_path / "bare.safetensors", dst, "--heads", "mlm", "--num-heads", "4")
    assert json.loads((dst / "config.json").read_text())["num_attention_heads"] == 4


@pytest.mark.parametrize("target", ["hf", "official"])
def test_a_pre_norm_patch_embedder_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    run, _ = write_run(tmp_path, model_config(pre_norm=True), tie_decoder=True)
    error = refused(capsys, "vlp", target, run, tmp_path / "out", "--heads", "mlm")
    assert "model.visual_embedder.norm_pre (model.visual_embedder.norm_pre.bias" in error
    assert "pre_norm: true" in error and f"no place in the {LAYOUT_NAMES[target]} layout" in error


def test_an_untied_mlm_decoder_is_refused_for_hf_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = write_run(tmp_path, model_config(pre_norm=False))
    error = refused(capsys, "vlp", "hf", run, tmp_path / "hf", "--heads", "mlm")
    assert "objectives.mlm.head.decoder.weight is not tied to the word embeddings" in error
    convert("vlp", "official", run, tmp_path / "official.ckpt")  # official ViLT keeps its own decoder
    state = torch.load(tmp_path / "official.ckpt", weights_only=True)["state_dict"]
    assert "mlm_score.decoder.weight" in state and "itm_score.fc.weight" in state


def test_another_visual_embedder_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_task(task_config(model_config(pre_norm=False))).state_dict()
    for key in [k for k in state if k.startswith("model.visual_embedder.")]:
        del state[key]
    state["model.visual_embedder.backbone.conv1.weight"] = torch.zeros(8, 3, 7, 7)
    state["model.visual_embedder.input_proj.weight"] = torch.zeros(32, 8, 1, 1)
    save_file(state, tmp_path / "cnn.safetensors")
    for target in ("official", "hf"):
        error = refused(
            capsys,
            "vlp",
            target,
            tmp_path / "cnn.safetensors",
            tmp_path / "out",
            "--num-heads",
            "4",
            "--heads",
            "",
        )
        assert "model.visual_embedder is not a ViTPatchEmbedder" in error
        assert "model.visual_embedder.backbone.conv1.weight" in error
    weights = ViLTWeights.from_task_state_dict(state)
    cnn_config = model_config()
    cnn_config["init_args"]["visual_embedder"] = {
        "class_path": "vlp.models.embedders.CNNGridEmbedder",
        "init_args": {},
    }
    problems = export_problems(weights, "official", cnn_config)
    assert len(problems) == 1 and problems[0].startswith(
        "model.visual_embedder is vlp.models.embedders.CNNGridEmbedder"
    )


def test_an_existing_destination_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = write_run(tmp_path, model_config(pre_norm=False))
    (tmp_path / "mine.pt").write_text("kept")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        convert("vlp", "vlp", run, tmp_path / "mine.pt")
    assert exit_info.value.code == 2 and "mine.pt already exists" in capsys.readouterr().err
    assert (tmp_path / "mine.pt").read_text() == "kept"
