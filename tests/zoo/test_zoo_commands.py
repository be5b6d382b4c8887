"""``python -m vlp zoo list | info | fetch | verify | inspect | convert`` on the registry and a local entry."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from zoo_fixtures import add_entry, tiny_vit_file

from vlp.errors import UserError
from vlp.zoo import entry_commands
from vlp.zoo.registry import ENTRIES


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLP_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VLP_ZOO_DIR", raising=False)
    monkeypatch.delenv("VLP_ZOO_LOCK", raising=False)
    monkeypatch.delenv("VLP_OFFLINE", raising=False)


def test_list_prints_every_entry_with_its_columns(capsys: pytest.CaptureFixture[str]) -> None:
    entries = entry_commands.list_entries([])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["name", "params", "res", "source", "sha256"]
    assert len(entries) == len(ENTRIES) == len(out) - 1
    row = next(line for line in out if line.startswith("detr:r50 "))
    assert "41.3M" in row and "800" in row and "prefix e632da11" in row and "box AP 42.0" in row
    assert entry_commands.list_entries(["--family", "vqgan"])[0].family == "vqgan"
    with pytest.raises(UserError, match="no such family"):
        entry_commands.list_entries(["--family", "clip"])


def test_an_unknown_name_suggests_near_ones() -> None:
    with pytest.raises(UserError, match="Did you mean vilt:b32-vqa"):
        entry_commands.info(["vilt:b32-vq"])


def test_fetch_verify_convert_and_info_on_a_local_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = add_entry(monkeypatch, tiny_vit_file(tmp_path / "vit.safetensors"))
    path = entry_commands.fetch_entry([entry.name])
    assert path == tmp_path / "cache" / entry.filename
    assert entry_commands.verify_entry([entry.name]) == entry.sha256
    entry_commands.info([entry.name])
    assert f"local      {path}" in capsys.readouterr().out
    out = entry_commands.convert_entry_command([entry.name, str(tmp_path / "vlp.safetensors")])
    state = load_file(str(out))
    assert "model.visual_embedder.pos_embed" in state and "model.encoder.blocks.1.attn.qkv.weight" in state
    assert "dropped    2" in capsys.readouterr().out  # head.weight, head.bias
    with pytest.raises(UserError, match="exists"):
        entry_commands.convert_entry_command([entry.name, str(out)])


def test_verify_refuses_a_changed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = add_entry(monkeypatch, tiny_vit_file(tmp_path / "vit.safetensors"))
    other = tmp_path / "other.safetensors"
    tiny_vit_file(other, dim=16)
    with pytest.raises(UserError, match="sha256"):
        entry_commands.verify_entry([entry.name, str(other)])
    assert other.exists()  # a user's file is never removed


def test_inspect_reads_a_pickled_checkpoint_safely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "detr.pth"
    torch.save(
        {"model": {"a": torch.zeros(2, 3), "b": torch.ones(4)}, "args": argparse.Namespace(lr=1e-4)}, path
    )
    lines = entry_commands.inspect_file([str(path), "--keys"])
    assert "model: state dict: 2 tensors, 10 values" in lines
    assert "model.a  (2, 3)  torch.float32" in capsys.readouterr().out


def test_init_from_a_zoo_name_starts_a_vilt_from_the_converted_vit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file as read

    from vlp.models.embedders.text import TextEmbedder
    from vlp.models.embedders.vit_patch import ViTPatchEmbedder
    from vlp.models.layers.heads import ITMHead
    from vlp.models.layers.transformer import TransformerEncoder
    from vlp.models.vilt import ViLT
    from vlp.objectives import ITMObjective
    from vlp.tasks import PretrainTask

    source = tiny_vit_file(tmp_path / "vit.safetensors")
    entry = add_entry(monkeypatch, source)
    model = ViLT(
        TextEmbedder(vocab_size=100, dim=32, max_len=8),
        ViTPatchEmbedder(dim=32, patch_size=8, pos_grid=2),
        TransformerEncoder(dim=32, depth=2, num_heads=4),
    )
    task = PretrainTask(model, {"itm": ITMObjective(ITMHead(32))}, init_from=f"zoo:{entry.name}")
    report = task.init_report
    assert report.source == f"zoo:{entry.name}"
    parts = [k for k in task.state_dict() if k.startswith(("model.visual_embedder.", "model.encoder."))]
    assert sorted(report.loaded) == sorted(parts)
    assert report.dropped == [] and all(not k.startswith("model.encoder.") for k in report.new)
    timm_state = read(str(source))
    torch.testing.assert_close(
        task.state_dict()["model.encoder.blocks.1.mlp.fc2.weight"],
        timm_state["blocks.1.mlp.fc2.weight"],
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(
        task.state_dict()["model.visual_embedder.pos_embed"], timm_state["pos_embed"], rtol=0, atol=0
    )
