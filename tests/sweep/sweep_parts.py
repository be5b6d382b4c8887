"""A tiny pre-training recipe (ViLT of width 32 over 32-px shapes, 3 steps) and sweep files over it, written
as YAML into a test's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DIM = 32
COLLATOR = "data.init_args.collator.init_args.whole_word_masking"


def part(class_path: str, **init_args: Any) -> dict[str, Any]:
    return {"class_path": class_path, "init_args": init_args}


def tiny_recipe(shapes: Path, steps: int = 3) -> dict[str, Any]:
    """MLM + ITM pre-training of a 2-layer ViLT of width 32; a checkpoint every step, a validation of one
    batch at the end. The run folder is the sweep's to set."""
    dim = "${model.init_args.model.init_args.encoder.init_args.dim}"
    model = part(
        "vlp.models.vilt.ViLT",
        text_embedder=part("vlp.models.embedders.text.TextEmbedder", vocab_size=30522, dim=DIM, max_len=40),
        visual_embedder=part("vlp.models.embedders.ViTPatchEmbedder", dim=DIM, patch_size=8, pos_grid=4),
        encoder=part("vlp.models.layers.transformer.TransformerEncoder", dim=DIM, depth=2, num_heads=4),
    )
    objectives = {
        "mlm": part("vlp.objectives.MLMObjective", head=part("vlp.models.layers.heads.MLMHead", dim=dim, vocab_size=30522)),
        "itm": part("vlp.objectives.ITMObjective", head=part("vlp.models.layers.heads.ITMHead", dim=dim)),
    }  # fmt: skip
    trainer = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": steps,
        "val_check_interval": steps,
        "check_val_every_n_epoch": None,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": "runs/unused",
        "callbacks": [part("vlp.runs.CurrentCheckpoint", every_n_train_steps=1)],
    }
    data = part(
        "vlp.datamodules.shards.ShardDataModule",
        root=str(shapes),
        batch_size=4,
        num_workers=0,
        transform=part("vlp.datamodules.transforms.ViltTransform", image_size=32, patch_size=8),
        decoder={"class_path": "vlp.datamodules.decode.SampleDecoder"},
        collator=part("vlp.datamodules.collate.PretrainCollator", max_text_len=40, whole_word_masking=True),
    )
    task = part("vlp.tasks.PretrainTask", model=model, objectives=objectives, lr=1e-3)
    return {"seed_everything": 0, "trainer": trainer, "model": task, "data": data}


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def two_by_two(folder: Path, shapes: Path, launcher: dict[str, Any], **more: Any) -> Path:
    """A sweep file of 2 arms (whole-word masking on, off) x 2 seeds over the tiny recipe."""
    recipe = write_yaml(folder / "tiny.yaml", tiny_recipe(shapes))
    spec = {
        "name": "tiny",
        "recipe": str(recipe),
        "axes": [{"grid": {COLLATOR: [True, False]}}],
        "seeds": [0, 1],
        "metrics": [{"name": "val/itm_acc", "mode": "max"}],
        "baseline": "whole_word_masking=true",
        "launcher": launcher,
        "out": str(folder / "sweep"),
        **more,
    }
    return write_yaml(folder / "tiny_sweep.yaml", spec)


LR = "model.init_args.lr"
SHARED_ARMS = ["lr=0.001", "lr=0.0005"]


def shared_first_stage(folder: Path, shapes: Path, launcher: dict[str, Any], **more: Any) -> Path:
    """A sweep file of 2 arms x 2 seeds over two stages of the tiny recipe, ``pre`` then ``ft`` from its
    checkpoint, the arms differing only in ``ft``'s learning rate: both arms' ``pre`` is one run per seed."""
    recipe = write_yaml(folder / "tiny.yaml", tiny_recipe(shapes))
    spec = {
        "name": "shared",
        "recipe": str(recipe),
        "axes": [{"grid": {f"ft:{LR}": [0.001, 0.0005]}}],
        "seeds": [0, 1],
        "stages": [{"name": "pre"}, {"name": "ft", "init_from": "pre"}],
        "metrics": [{"name": "val/itm_acc", "mode": "max", "stage": "pre"}, {"name": "val/itm_loss", "mode": "min"}],
        "baseline": "lr=0.001",
        "launcher": launcher,
        "out": str(folder / "sweep"),
        **more,
    }  # fmt: skip
    return write_yaml(folder / "shared_sweep.yaml", spec)
