"""Shared tiny fixtures, and the in-process ``python -m vlp`` runs of the recipe tests. Everything is
random-initialised and generated here; nothing is downloaded."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from vlp.datamodules.synth.scenes import ShapesConfig
from vlp.datamodules.synth.shapes import write_shapes
from vlp.models.embedders.text import TextEmbedder
from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.models.vqgan.model import VQGAN

TINY_DIM = 32
TINY_VOCAB = 100
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMOKE_STEPS = ("--config", str(CONFIGS / "trainer/smoke.yaml"))  # 2 steps, one batch of each evaluation
FAST_DEV_RUN = ("--trainer.fast_dev_run=2",)  # 2 training and 2 validation batches, nothing written


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs two workers), split the cores between the workers, and
    hand the same share to the processes a test launches, so the workers do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _torch_threads() -> Iterator[None]:
    """Give every test the process's torch thread count: a test (or a module fixture) that sets one
    thread must not change the reduction order, and so the float results, of the tests after it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def make_tiny_vilt(
    dim: int = TINY_DIM, patch_size: int = 8, pos_grid: int = 4, max_image_len: int = -1
) -> ViLT:
    return ViLT(
        TextEmbedder(vocab_size=TINY_VOCAB, dim=dim, max_len=16),
        ViTPatchEmbedder(dim=dim, patch_size=patch_size, pos_grid=pos_grid, max_image_len=max_image_len),
        TransformerEncoder(dim=dim, depth=2, num_heads=4),
    )


def make_tiny_vqgan(**overrides: Any) -> VQGAN:
    """A 16 px VQGAN at f = 4 (a 4x4 code grid, attention at 4x4), 16 codes of 4 dimensions."""
    config: dict[str, Any] = dict(
        resolution=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), z_channels=8,
        num_codes=16, code_dim=4, norm_groups=4,
    )  # fmt: skip
    return VQGAN(**(config | overrides))


@pytest.fixture
def tiny_vilt() -> ViLT:
    return make_tiny_vilt().eval()


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few dozen shapes samples (images with captions and QA, pairs with statements), 32 px, 2 shards
    per split."""
    root = tmp_path_factory.mktemp("shapes") / "shapes32"
    config = ShapesConfig(
        resolution=32,
        train_samples=16,
        val_samples=8,
        test_samples=4,
        pair_train_samples=8,
        pair_val_samples=4,
        pair_test_samples=4,
        samples_per_shard=4,
        seed=5,
    )
    write_shapes(root, config)
    return root


@pytest.fixture(scope="session")
def shapes64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recipes' resolution: 16 training samples and 16 pairs, 8 of each evaluation split, 8 per shard."""
    root = tmp_path_factory.mktemp("data") / "shapes64"
    sizes = {"train_samples": 16, "val_samples": 8, "test_samples": 8, "pair_train_samples": 16}
    sizes |= {"pair_val_samples": 8, "pair_test_samples": 8}
    write_shapes(root, ShapesConfig(resolution=64, samples_per_shard=8, seed=1, **sizes))
    return root


@pytest.fixture(scope="session")
def e2e_pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the E2E-VLP shapes pre-training recipe's task (random weights, Lightning's layout)."""
    path = tmp_path_factory.mktemp("e2e_pretrain") / "last.ckpt"
    return save_recipe_task(
        CONFIGS / "e2e_vlp/shapes_pretrain.yaml", path, "--model.init_args.init_from=null"
    )


@pytest.fixture(scope="session")
def e2e_encoder_pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the E2E-VLP pre-training's first stage (encoder objectives only), random weights:
    what the second stage's ``init_from`` reads."""
    path = tmp_path_factory.mktemp("e2e_pretrain_encoder") / "last.ckpt"
    return save_recipe_task(CONFIGS / "e2e_vlp/shapes_pretrain_encoder.yaml", path)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str, str]:
    """``main(argv)`` in this process: its exit code (None when it returned), stdout and stderr."""
    from vlp.cli import main  # here, not above: most tests never build the CLI

    code: int | str | None = None
    try:
        main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def printed_config(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """The config ``python -m vlp fit ARGS --print_config`` prints (it must exit 0)."""
    code, out, err = run_cli(["fit", *args, "--print_config"], capsys)
    assert code == 0, err[-3000:]
    return yaml.safe_load(out)


def combined_with_trainer_config(
    capsys: pytest.CaptureFixture[str], recipe: Path, trainer: str
) -> dict[str, Any]:
    """``recipe`` followed by ``configs/trainer/TRAINER.yaml`` (a 2-process config): it parses, the trainer
    config's 2 devices win and the recipe's own ``max_steps`` stays. The resolved config."""
    resolved = printed_config(
        capsys, "--config", str(recipe), "--config", str(CONFIGS / f"trainer/{trainer}.yaml")
    )
    assert resolved["trainer"]["devices"] == 2
    assert resolved["trainer"]["max_steps"] == yaml.safe_load(recipe.read_text())["trainer"]["max_steps"]
    return resolved


def save_recipe_task(config: Path, path: Path, *overrides: str) -> Path:
    """A checkpoint at ``path`` of the task the recipe ``config`` builds (random weights, Lightning's layout):
    what a recipe's ``init_from`` reads."""
    from vlp.cli import VLPCLI

    cli = VLPCLI(args=["--config", str(config), *overrides], run=False)
    torch.save({"state_dict": cli.model.state_dict(), "global_step": 0}, path)
    return path


def save_vqgan_checkpoint(model_config: str, path: Path) -> Path:
    """A checkpoint at ``path`` in VQGANTask's layout of ``configs/<model_config>`` (random weights, seed 0)."""
    from vlp.models.vqgan.model import CONFIG_KEY

    config = yaml.safe_load((CONFIGS / model_config).read_text())
    torch.manual_seed(0)
    vqgan = VQGAN(**config["init_args"])
    state = {f"model.{k}": v for k, v in vqgan.state_dict().items()}
    torch.save({CONFIG_KEY: vqgan.config, "state_dict": state, "global_step": 0}, path)
    return path


@pytest.fixture(scope="session")
def vqgan_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint in VQGANTask's layout of the VQGAN recipe's architecture (random weights)."""
    return save_vqgan_checkpoint("model/vqgan_shapes.yaml", tmp_path_factory.mktemp("vqgan") / "last.ckpt")


@pytest.fixture(scope="session")
def vqgan_f8_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same for the f = 8 VQGAN recipe's architecture (8x8 codes)."""
    return save_vqgan_checkpoint(
        "model/vqgan_shapes_f8.yaml", tmp_path_factory.mktemp("vqgan_f8") / "last.ckpt"
    )


def run_recipe(
    command: str,
    recipe: Path,
    data: Path,
    root: Path,
    *overrides: str,
    steps: Sequence[str] = SMOKE_STEPS,
    eval_batch_size: int = 4,
) -> None:
    """``python -m vlp COMMAND --config RECIPE`` in this process, limited by ``steps`` (two smoke steps by
    default), on the shapes folder ``data`` (batches of 4, no loader workers), writing under ``root``."""
    from vlp.cli import main

    main(
        [
            command, "--config", str(recipe), *steps, f"--trainer.default_root_dir={root}", *overrides,
            f"--data.init_args.root={data}", "--data.init_args.synth=null", "--data.init_args.batch_size=4",
            f"--data.init_args.eval_batch_size={eval_batch_size}", "--data.init_args.num_workers=0",
        ]
    )  # fmt: skip


def fit_recipe(capsys: pytest.CaptureFixture[str], metrics: Iterable[str], *args: Any, **options: Any) -> str:
    """``run_recipe("fit", *args, **options)``: it prints its final validation metrics, ``metrics`` among
    them. Its stdout."""
    run_recipe("fit", *args, **options)
    out = capsys.readouterr().out
    assert "final validation metrics:" in out
    for metric in metrics:
        assert metric in out, metric
    return out


@pytest.fixture(scope="session")
def shapes_p16_task() -> Any:
    """The 16-px shapes recipe's task (configs/vilt/shapes_pretrain.yaml with shapes_pretrain_p16.yaml
    layered), built through the CLI: the model whose sizes the CPU benches build in code."""
    from vlp.cli import VLPCLI

    recipe = [CONFIGS / "vilt/shapes_pretrain.yaml", CONFIGS / "vilt/shapes_pretrain_p16.yaml"]
    return VLPCLI(args=["--config", str(recipe[0]), "--config", str(recipe[1])], run=False).model
