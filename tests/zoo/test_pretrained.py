"""vlp's own models as pretrained folders: save_pretrained from a run, a checkpoint or memory, load back with
the same outputs, refusals; load by zoo name through the conversion pipeline.

Tiny random ViLTs (width 32, 2 layers, 4 heads, 64 px images, 16 px patches); nothing is downloaded.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_vilt_convert import assert_same_fusion, make_inputs, randomize, run_vlp, tiny_config
from torch import Tensor, nn
from transformers import ViltModel

import vlp.zoo
from vlp.errors import UserError
from vlp.zoo.converted import ConversionReport, Converted
from vlp.zoo.pretrained import build_module, load, load_pretrained, save_pretrained
from vlp.zoo.vilt_convert import convert_hf

DIM, VOCAB = 32, 60
METRICS_CSV = "epoch,step,train/loss,val/itm_acc,val/mlm_acc\n0,19,2.5,,\n0,19,,0.61,0.40\n1,39,2.1,,\n1,39,,0.72,0.55\n"


def model_config(pre_norm: bool = True, encoder_eps: float = 1e-6) -> dict[str, Any]:
    """The tiny ViLT of these tests, as a recipe writes it (the shapes recipes set pre_norm)."""
    return {
        "class_path": "vlp.models.vilt.ViLT",
        "init_args": {
            "text_embedder": {
                "class_path": "vlp.models.embedders.text.TextEmbedder",
                "init_args": {"vocab_size": VOCAB, "dim": DIM, "max_len": 12, "norm_eps": 1e-12},
            },
            "visual_embedder": {
                "class_path": "vlp.models.embedders.ViTPatchEmbedder",
                "init_args": {
                    "dim": DIM,
                    "patch_size": 16,
                    "pos_grid": 4,
                    "max_image_len": -1,
                    "pre_norm": pre_norm,
                },
            },
            "encoder": {
                "class_path": "vlp.models.layers.transformer.TransformerEncoder",
                "init_args": {
                    "dim": DIM,
                    "depth": 2,
                    "num_heads": 4,
                    "mlp_ratio": 2.0,
                    "norm_eps": encoder_eps,
                },
            },
        },
    }


def task_config(model: dict[str, Any]) -> dict[str, Any]:
    head = "vlp.models.layers.heads."
    return {
        "class_path": "vlp.tasks.PretrainTask",
        "init_args": {
            "model": model,
            "objectives": {
                "mlm": {
                    "class_path": "vlp.objectives.MLMObjective",
                    "init_args": {
                        "head": {
                            "class_path": head + "MLMHead",
                            "init_args": {"dim": DIM, "vocab_size": VOCAB},
                        }
                    },
                },
                "itm": {
                    "class_path": "vlp.objectives.ITMObjective",
                    "init_args": {"head": {"class_path": head + "ITMHead", "init_args": {"dim": DIM}}},
                },
            },
            "loss_weights": {"mlm": 1.0, "itm": 0.5},
            "lr": 0.001,
        },
    }


def run_config(task: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed_everything": 3,
        "trainer": {"max_steps": 40, "precision": "32-true", "default_root_dir": "runs/tiny"},
        "model": task,
        "data": {
            "class_path": "vlp.datamodules.shards.ShardDataModule",
            "init_args": {"root": "data/shapes64"},
        },
    }


def make_task(config: dict[str, Any], tie_decoder: bool = False, seed: int = 0) -> nn.Module:
    """The task jsonargparse builds from ``config`` (as LightningCLI does), every weight random."""
    task = randomize(build_module(config, "test task"), seed)
    if tie_decoder:  # transformers ties the MLM decoder to the word embeddings
        with torch.no_grad():
            task.objectives["mlm"].head.decoder.weight.copy_(task.model.text_embedder.word_embeddings.weight)
    return task


def write_run(
    root: Path, model: dict[str, Any] | None = None, tie_decoder: bool = False
) -> tuple[Path, nn.Module]:
    """A run folder as ``python -m vlp fit`` leaves it: config.yaml, metrics.csv, checkpoints/last.ckpt
    (step 40) and best-step=20.ckpt (the same weights, step 20)."""
    task_cfg = task_config(model or model_config())
    task = make_task(task_cfg, tie_decoder)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(run_config(task_cfg), sort_keys=False))
    (run / "metrics.csv").write_text(METRICS_CSV)
    for name, step in (("last.ckpt", 40), ("best-step=20.ckpt", 20)):
        checkpoint = {
            "state_dict": task.state_dict(),
            "global_step": step,
            "epoch": 1,
            "hyper_parameters": {"lr": 1e-3},
        }
        torch.save(checkpoint, run / "checkpoints" / name)
    return run, task


def outputs(model: nn.Module, heads: dict[str, nn.Module]) -> dict[str, Tensor]:
    """The model's states and pooled output on the fixed batch, and each head's logits."""
    batch = make_inputs()
    with torch.no_grad():
        fused = run_vlp(model.eval(), batch)
        out = {"text": fused.text_states, "image": fused.image_states, "pooled": fused.pooled}
        if "mlm" in heads:
            out["mlm"] = heads["mlm"].eval()(fused.text_states)
        if "itm" in heads:
            out["itm"] = heads["itm"].eval()(fused.pooled)
    return out


def task_outputs(task: nn.Module) -> dict[str, Tensor]:
    return outputs(task.model, {name: objective.head for name, objective in task.objectives.items()})


def assert_identical(ours: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Bit for bit: the same modules with the same weights on the same batch in the same process."""
    assert ours.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(ours[name], value), name


# ------------------------------------------------------------------------------------------ save and load


def test_a_run_folder_saves_and_loads_back_with_identical_outputs(tmp_path: Path) -> None:
    run, task = write_run(tmp_path)
    out = save_pretrained(run, tmp_path / "tiny-vilt")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "model.safetensors"]
    state = load_file(str(out / "model.safetensors"))
    assert state.keys() == task.state_dict().keys()  # the task's layout: init_from reads it by name
    assert all(torch.equal(state[key], value) for key, value in task.state_dict().items())
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == model_config()
    assert sorted(config["heads"]) == ["itm", "mlm"]
    assert config["heads"]["mlm"]["class_path"] == "vlp.models.layers.heads.MLMHead"

    pretrained = load_pretrained(out)
    assert not pretrained.model.training and sorted(pretrained.heads) == ["itm", "mlm"]
    assert pretrained.model.visual_embedder.norm_pre is not None
    assert_identical(outputs(pretrained.model, pretrained.heads), task_outputs(task))
    assert_identical(outputs(vlp.zoo.load(out), {}), outputs(task.model, {}))

    card = (out / "README.md").read_text()
    params = sum(t.numel() for t in task.state_dict().values())
    model_params = sum(p.numel() for p in task.model.parameters())
    assert card.startswith("# tiny-vilt\n") and "(step 40)" in card
    assert f"Parameters: {params / 1e6:.2f}M in all; model {model_params / 1e6:.2f}M" in card
    assert "- `encoder`: TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0" in card
    assert "- objectives: mlm (weight 1.0), itm (weight 0.5)" in card and "lr 0.001" in card
    assert "max_steps 40" in card and "- seed: 3" in card
    assert "## Metrics (validation, `metrics.csv`, step 39)" in card
    assert "| val/itm_acc | 0.7200 |" in card and "| val/mlm_acc | 0.5500 |" in card
    assert 'model = vlp.zoo.load("tiny-vilt")' in card


def test_a_checkpoint_of_a_run_reads_the_run_config_and_its_metrics_up_to_its_step(tmp_path: Path) -> None:
    run, task = write_run(tmp_path)
    out = save_pretrained(run / "checkpoints" / "best-step=20.ckpt", tmp_path / "best", heads=["itm"])
    card = (out / "README.md").read_text()
    assert "(step 20)" in card and "step 19)" in card and "| val/itm_acc | 0.6100 |" in card
    pretrained = load_pretrained(out)
    assert sorted(pretrained.heads) == ["itm"]
    # the MLM head left out of the folder is named in the card
    assert "- `objectives.mlm.head.* (6 tensors: heads=['itm'])` (left out)" in card
    expected = task_outputs(task)
    del expected["mlm"]
    assert_identical(outputs(pretrained.model, pretrained.heads), expected)


def test_in_memory_task_or_model_with_its_config(tmp_path: Path) -> None:
    task_cfg = task_config(model_config(pre_norm=False))
    task = make_task(task_cfg, seed=5)
    save_pretrained((task, task_cfg), tmp_path / "task")
    assert_identical(outputs(load_pretrained(tmp_path / "task").model, {}), outputs(task.model, {}))
    save_pretrained((task, run_config(task_cfg)), tmp_path / "run")  # a whole run config works too
    assert "- seed: 3" in (tmp_path / "run" / "README.md").read_text()
    save_pretrained((task.model, model_config(pre_norm=False)), tmp_path / "model")
    pretrained = load_pretrained(tmp_path / "model")
    assert pretrained.heads == {} and "## Training" not in (tmp_path / "model" / "README.md").read_text()
    assert_identical(outputs(pretrained.model, {}), outputs(task.model, {}))


def test_a_weight_file_the_config_names_is_switched_off(tmp_path: Path) -> None:
    """A ViT embedder started from a timm file: the folder holds the weights, the file is no longer needed."""
    vit = tmp_path / "vit.safetensors"
    generator = torch.Generator().manual_seed(2)
    shapes = {
        "patch_embed.proj.weight": (DIM, 3, 16, 16),
        "patch_embed.proj.bias": (DIM,),
        "cls_token": (1, 1, DIM),
    }
    save_file(
        {k: torch.randn(s, generator=generator) for k, s in {**shapes, "pos_embed": (1, 17, DIM)}.items()},
        vit,
    )
    config = model_config(pre_norm=False)
    config["init_args"]["visual_embedder"]["init_args"]["init_from"] = str(vit)
    model = build_module(config, "test model")
    assert torch.equal(model.visual_embedder.cls_token, load_file(str(vit))["cls_token"])
    out = save_pretrained((model, config), tmp_path / "out")
    vit.unlink()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["init_args"]["visual_embedder"]["init_args"]["init_from"] is None
    assert f"model.init_args.visual_embedder.init_args.init_from: {vit}" in (out / "README.md").read_text()
    assert_identical(outputs(load(out), {}), outputs(model, {}))


# ------------------------------------------------------------------------------------------ refusals


def test_a_folder_that_is_not_empty_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    run, _ = write_run(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    with pytest.raises(FileExistsError, match=re.escape(f"{out} already exists and is not an empty folder")):
        save_pretrained(run, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "kept"
    (tmp_path / "file").write_text("kept")
    with pytest.raises(FileExistsError, match="file already exists"):
        save_pretrained(run, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "kept"
    save_pretrained(run, tmp_path / "empty")  # an empty folder is fine
    (tmp_path / "empty2").mkdir()
    save_pretrained(run, tmp_path / "empty2")


def test_a_checkpoint_without_its_run_config_is_refused_naming_where_it_looked(tmp_path: Path) -> None:
    task = make_task(task_config(model_config()))
    torch.save({"state_dict": task.state_dict()}, tmp_path / "lone.ckpt")
    with pytest.raises(FileNotFoundError, match=re.escape(f"looked for {tmp_path / 'config.yaml'}")):
        save_pretrained(tmp_path / "lone.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match=r"no heads \['vqa'\]"):
        save_pretrained(write_run(tmp_path)[0], tmp_path / "out", heads=["vqa"])


def test_load_names_the_keys_that_do_not_fit(tmp_path: Path) -> None:
    run, _ = write_run(tmp_path)
    out = save_pretrained(run, tmp_path / "out")
    config = yaml.safe_load((out / "config.yaml").read_text())
    shallow = copy.deepcopy(config)
    shallow["model"]["init_args"]["encoder"]["init_args"]["depth"] = 1
    (out / "config.yaml").write_text(yaml.safe_dump(shallow))
    with pytest.raises(KeyError, match=r"unexpected \['encoder\.blocks\.1\.attn\.proj\.bias'"):
        load(out)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    state = load_file(str(out / "model.safetensors"))
    del state["objectives.itm.head.fc.bias"]
    save_file(state, out / "model.safetensors")
    with pytest.raises(KeyError, match=r"head itm: .*missing \['fc\.bias'\]"):
        load(out)
    with pytest.raises(FileNotFoundError, match="nowhere: neither a folder"):
        load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no config\.yaml"):
        load(tmp_path)


# ------------------------------------------------------------------------------------------ zoo names


def test_a_zoo_name_loads_the_converted_model_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline (fetch, verify, convert) stood in for by a converted tiny HF ViLT-B/32-shaped model."""
    hf = randomize(ViltModel(tiny_config(hidden_size=48, num_attention_heads=12, intermediate_size=96)))
    asked = []

    def convert_entry(entry: Any) -> Converted:
        asked.append(entry.name)
        return convert_hf(hf.state_dict(), entry.name)

    monkeypatch.setattr("vlp.zoo.pipeline.convert_entry", convert_entry)
    pretrained = load_pretrained("vilt:hf-b32-mlm")
    assert asked == ["vilt:hf-b32-mlm"] and pretrained.heads == {} and not pretrained.model.training
    with torch.no_grad():
        assert_same_fusion(hf, pretrained.model, make_inputs())
    load("zoo:vilt:hf-b32-mlm")
    assert asked == ["vilt:hf-b32-mlm", "vilt:hf-b32-mlm"]


def test_a_zoo_part_is_refused_pointing_to_init_from(monkeypatch: pytest.MonkeyPatch) -> None:
    part = Converted({"model.visual_embedder.cls_token": torch.zeros(1, 1, 8)}, None, ConversionReport("vit"))
    monkeypatch.setattr("vlp.zoo.pipeline.convert_entry", lambda entry: part)
    with pytest.raises(UserError, match=r"a part of a model.*init_from: zoo:timm:vit_base_patch32_384"):
        load("timm:vit_base_patch32_384")
