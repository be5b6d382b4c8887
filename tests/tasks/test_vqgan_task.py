"""VQGANTask: two optimisers after one backward, disc_start, validation figures, checkpoints for VQGAN.from_checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from conftest import make_tiny_vqgan
from vlp.batch import Batch
from vlp.metrics.codebook import usage_from_counts
from vlp.models.vqgan.discriminator import NLayerDiscriminator
from vlp.models.vqgan.model import VQGAN
from vlp.objectives.vq import VQGANLoss
from vlp.tasks.vqgan import VQGANTask

pytestmark = pytest.mark.filterwarnings("ignore")


def tiny_task(disc_start: int = 0, discriminator: bool = True, **kwargs: object) -> VQGANTask:
    model = make_tiny_vqgan(ema=True, dead_code_threshold=0.5)
    loss = VQGANLoss(ema=True, disc_weight=0.1, disc_start=disc_start)
    disc = NLayerDiscriminator(ndf=8, n_layers=2) if discriminator else None
    return VQGANTask(model, loss, disc, lr=3e-3, **kwargs)


def blocky_batch(size: int = 8, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    cells = torch.rand(size, 3, 4, 4, generator=generator) * 2 - 1
    pixels = F.interpolate(cells, size=(16, 16), mode="nearest")
    return Batch(keys=[f"{seed}-{i}" for i in range(size)], pixels=pixels)


class Fixed(LightningDataModule):
    def __init__(self, train: list[Batch], val: list[Batch]) -> None:
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=None)


def trainer(batches: int, **kwargs: object) -> Trainer:
    options = dict(
        accelerator="cpu",
        max_steps=batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    options.update(kwargs)
    return Trainer(**options)


def test_reconstruction_improves_and_the_discriminator_waits_for_disc_start() -> None:
    torch.manual_seed(0)
    task = tiny_task(disc_start=40)
    batch = blocky_batch()
    disc_init = {
        k: v.clone()
        for k, v in task.discriminator.state_dict().items()
        if "running" not in k and "num_batches" not in k
    }
    l1_before = F.l1_loss(task.model.eval()(batch.pixels).reconstruction, batch.pixels).item()
    task.train()
    run = trainer(40)
    run.fit(task, datamodule=Fixed([batch] * 40, []))
    assert run.global_step == 40  # one per batch, though two optimisers step
    disc_now = task.discriminator.state_dict()
    for key, value in disc_init.items():  # zero loss before disc_start: Adam moves nothing
        torch.testing.assert_close(disc_now[key], value, msg=key)
    l1_after = F.l1_loss(task.model.eval()(batch.pixels).reconstruction, batch.pixels).item()
    assert l1_after < 0.6 * l1_before
    run = trainer(45)  # five more batches, now past disc_start
    run.fit(task, datamodule=Fixed([batch] * 45, []))
    assert any(not torch.allclose(task.discriminator.state_dict()[k], v) for k, v in disc_init.items())


def test_without_discriminator_one_optimiser_trains_a_vq_vae() -> None:
    task = tiny_task(discriminator=False)
    run = trainer(3)
    run.fit(task, datamodule=Fixed([blocky_batch()] * 3, []))
    assert run.global_step == 3 and len(run.optimizers) == 1


def test_validation_figures_are_computed_over_every_batch() -> None:
    task = tiny_task().eval()
    batches = [blocky_batch(6, seed=1), blocky_batch(4, seed=2)]
    run = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    run.validate(task, datamodule=Fixed([], batches), verbose=False)
    metrics = run.callback_metrics
    pixels = torch.cat([b.pixels for b in batches])
    with torch.no_grad():
        out = task.model(pixels)
    reconstruction = out.reconstruction.clamp(-1, 1)
    mse = ((reconstruction - pixels) / 2).pow(2).mean(dim=(1, 2, 3))
    assert metrics["val/psnr"].item() == pytest.approx((10 * torch.log10(1 / mse)).mean().item(), abs=1e-4)
    assert metrics["val/l1"].item() == pytest.approx((reconstruction - pixels).abs().mean().item(), abs=1e-5)
    counts = torch.bincount(out.ids.flatten(), minlength=16).float()
    expected = usage_from_counts(counts)
    assert metrics["val/code_usage"].item() == pytest.approx(expected["code_usage"].item())
    assert metrics["val/perplexity"].item() == pytest.approx(expected["perplexity"].item(), rel=1e-5)


def test_codebook_usage_figures_on_known_counts() -> None:
    usage = usage_from_counts(torch.tensor([2.0, 2.0, 0.0, 0.0]))
    assert usage["perplexity"].item() == pytest.approx(2.0)  # two codes used equally
    assert usage["code_usage"].item() == pytest.approx(0.5)


def test_checkpoint_rebuilds_the_vqgan(tmp_path: Path) -> None:
    task = tiny_task()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    run = trainer(2, enable_checkpointing=True, callbacks=[checkpoints])
    run.fit(task, datamodule=Fixed([blocky_batch()] * 2, []))
    loaded = VQGAN.from_checkpoint(tmp_path / "last.ckpt")
    for key, value in task.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)


def test_mismatched_ema_and_missing_pixels_are_named() -> None:
    model = tiny_task().model
    with pytest.raises(ValueError, match=r"loss\.ema=False but the model's quantizer has ema=True"):
        VQGANTask(model, VQGANLoss(ema=False))
    with pytest.raises(ValueError, match=r"batch\.pixels is None"):
        VQGANTask.pixels(Batch(keys=["a"]))


def test_a_gumbel_vqgan_is_refused_by_name() -> None:
    model = make_tiny_vqgan(quantizer="gumbel")
    with pytest.raises(ValueError, match="GumbelQuantizer"):
        VQGANTask(model, VQGANLoss(ema=False))
