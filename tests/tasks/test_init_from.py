"""init_from: start a task from another run's checkpoint, reporting what was loaded, new and dropped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from finetune_parts import DIM, nlvr2_task, pretrain_task, retrieval_task, tiny_vilt, vqa_task
from lightning import Trainer
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from vlp.errors import UserError
from vlp.models.layers.heads import ClassifierHead
from vlp.objectives import VQAObjective
from vlp.tasks import VQATask
from vlp.tasks.init_from import resolve_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real Lightning checkpoint of a tiny pre-training run (one step), and its weights."""
    from distributed_run import make_batches

    root = tmp_path_factory.mktemp("pretrain")
    task = pretrain_task(seed=3)
    task.configure_optimizers = lambda: torch.optim.AdamW(task.parameters(), lr=1e-3)  # no schedule needed
    trainer = Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(task, DataLoader(make_batches(1), batch_size=None))
    path = root / "last.ckpt"
    trainer.save_checkpoint(path)
    return path, {k: v.clone() for k, v in task.state_dict().items()}


def test_vqa_loads_the_model_drops_pretraining_heads_and_reports_new_ones(
    pretrained: tuple[Path, dict[str, torch.Tensor]], caplog: pytest.LogCaptureFixture
) -> None:
    path, weights = pretrained
    with caplog.at_level(logging.INFO, logger="vlp.tasks.init_from"):
        task = vqa_task(seed=11, init_from=str(path))
    report = task.init_report
    model_keys = sorted(k for k in weights if k.startswith("model."))
    assert sorted(report.loaded) == model_keys
    assert report.new == [k for k in task.state_dict() if k.startswith("objectives.vqa.")] and report.new
    assert report.dropped == sorted(
        k for k in weights if k.startswith(("objectives.mlm.", "objectives.itm."))
    )
    assert report.adapted == {}
    for key in model_keys:
        torch.testing.assert_close(task.state_dict()[key], weights[key], rtol=0, atol=0, msg=key)
    # the new head keeps its own initialisation: a fresh task with the same seed has the same head
    fresh = vqa_task(seed=11)
    for key in report.new:
        torch.testing.assert_close(task.state_dict()[key], fresh.state_dict()[key], msg=key)
    (record,) = [r for r in caplog.records if r.name == "vlp.tasks.init_from"]  # one block
    assert str(path) in record.getMessage()
    assert "objectives.mlm.head.decoder.weight" in record.getMessage()
    assert "objectives.vqa.head.classifier.3.weight" in record.getMessage()


def test_a_shape_mismatch_fails_naming_the_key(pretrained: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = pretrained
    model = tiny_vilt(vocab=120)  # another vocabulary: the word table differs
    with pytest.raises(
        ValueError,
        match=r"model\.text_embedder\.word_embeddings\.weight: checkpoint \(100, 32\), task \(120, 32\)",
    ):
        VQATask(model, {"vqa": VQAObjective(ClassifierHead(DIM, 4))}, init_from=str(path))


def test_nlvr2_grows_the_checkpoints_modality_table_explicitly(
    pretrained: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, weights = pretrained
    task = nlvr2_task(seed=11, init_from=str(path))
    key = "model.token_type_embeddings.weight"
    assert key in task.init_report.adapted and key not in task.init_report.loaded
    table, stored = task.state_dict()[key], weights[key]
    assert table.shape == (3, DIM)
    torch.testing.assert_close(table, torch.cat([stored, stored[1:]]), rtol=0, atol=0)


def test_retrieval_rank_head_starts_from_the_itm_match_row(
    pretrained: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, weights = pretrained
    task = retrieval_task(seed=11, init_from=str(path))
    report = task.init_report
    assert sorted(report.adapted) == ["objectives.rank.head.fc.bias", "objectives.rank.head.fc.weight"]
    assert report.new == []
    assert not any(k.startswith("objectives.itm.") for k in report.dropped)  # used, not dropped
    state = task.state_dict()
    torch.testing.assert_close(
        state["objectives.rank.head.fc.weight"], weights["objectives.itm.head.fc.weight"][1:]
    )
    torch.testing.assert_close(
        state["objectives.rank.head.fc.bias"], weights["objectives.itm.head.fc.bias"][1:]
    )
    # its scores are the pre-trained ITM match logits
    pretrain = pretrain_task()
    pretrain.load_state_dict(weights)
    pooled = torch.randn(5, DIM)
    torch.testing.assert_close(task.ranker.score(pooled), pretrain.objectives["itm"].head(pooled)[:, 1])


def test_safetensors_and_plain_state_dicts_load_too(
    pretrained: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    _, weights = pretrained
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "w.safetensors"))
    torch.save(weights, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        task = vqa_task(seed=11, init_from=str(tmp_path / name))
        assert len(task.init_report.loaded) == sum(k.startswith("model.") for k in weights)


def test_positions_of_another_grid_are_resampled_and_reported(
    pretrained: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    from vlp.zoo.timm_weights import interpolate_positions

    _, weights = pretrained
    key = "model.visual_embedder.pos_embed"
    wider = interpolate_positions(weights[key], 4)  # the checkpoint of a 4x4-patch run; the task has 2x2
    save_file(
        {**{k: v.contiguous() for k, v in weights.items()}, key: wider}, str(tmp_path / "w.safetensors")
    )
    task = vqa_task(seed=11, init_from=str(tmp_path / "w.safetensors"))
    assert task.init_report.adapted == {
        key: "positions resampled from a 4x4 to a 2x2 grid (bicubic, [CLS] kept)"
    }
    torch.testing.assert_close(task.state_dict()[key], interpolate_positions(wider, 2), rtol=0, atol=0)
    assert key not in task.init_report.loaded


def test_a_pattern_is_refused_not_resolved_by_recency(tmp_path: Path) -> None:
    for version in (0, 1):
        path = tmp_path / f"version_{version}" / "last.ckpt"
        path.parent.mkdir()
        path.write_bytes(b"")
    with pytest.raises(UserError, match=r"version_\*/last\.ckpt is a pattern; name one checkpoint exactly"):
        resolve_checkpoint(str(tmp_path / "version_*" / "last.ckpt"))


def test_a_missing_checkpoint_names_the_recipe_that_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "configs" / "vilt").mkdir(parents=True)
    (tmp_path / "configs" / "vilt" / "pre.yaml").write_text("trainer:\n  default_root_dir: runs/pre\n")
    (tmp_path / "configs" / "vilt" / "other.yaml").write_text("trainer:\n  default_root_dir: runs/other\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError,
        match=r"runs/pre/ckpt/last\.ckpt not found; it is written by `python -m vlp fit --config configs/vilt/pre\.yaml`$",
    ):
        resolve_checkpoint("runs/pre/ckpt/last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"pre\.yaml"):
        resolve_checkpoint("runs/pre/checkpoints/last.ckpt")
    with pytest.raises(FileNotFoundError, match="point init_from at an existing checkpoint"):
        resolve_checkpoint("elsewhere/last.ckpt")
