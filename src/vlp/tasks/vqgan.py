"""VQGANTask: trains a :class:`~vlp.models.vqgan.model.VQGAN` with a PatchGAN discriminator (two optimisers).

Manual optimisation. Each training step runs the autoencoder once and the discriminator three times:
on the reconstruction with its weights detached (the generator's GAN loss, which must not train the
discriminator), and on the real images and the detached reconstruction (the discriminator's loss).
Generator and discriminator losses are then summed into **one** backward pass: every parameter gets
exactly its own loss's gradient (the generator loss cannot reach the discriminator's weights, the
discriminator loss cannot reach the autoencoder), so this equals taming's two passes while every
parameter takes part in the single gradient reduction DDP and FSDP2 do per step. Then both optimisers
step.

Lightning counts every ``LightningOptimizer.step`` in ``global_step``; the discriminator's optimiser
steps through the plain torch optimiser instead, so ``global_step``, ``max_steps``, ``fast_dev_run``,
``disc_start`` and the schedule all count batches. (That step bypasses the precision plugin, which only
matters for a gradient scaler: ``16-mixed`` on a GPU is refused; fp32 and bf16-mixed need none.)

Logged: ``train/{loss,l1,codebook,commitment,g_loss,d_weight,disc_loss,logits_real,logits_fake,perplexity}``
and at every validation ``val/l1`` (mean absolute error in [-1, 1] pixels), ``val/psnr`` (per image
over [0, 1] pixels, averaged), ``val/perplexity`` and ``val/code_usage`` (over the whole validation,
every process), ``val/loss`` (reconstruction + codebook terms).

``predict`` writes under ``predict_dir``, per batch and process, ``reconstructions_rank<r>_batch<i>.png``
(the originals in the top row, their reconstructions below, in the batch's order) and, from every process
at the end, ``reconstructions.jsonl``: ``{"key", "grid": <PNG file>, "column", "psnr"}`` per image
(PSNR in dB over the image's real pixels in [0, 1]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio

from vlp.batch import Batch
from vlp.metrics.codebook import CodebookUsage, usage_from_counts
from vlp.models.vqgan.discriminator import NLayerDiscriminator
from vlp.models.vqgan.model import CONFIG_KEY, VQGAN
from vlp.models.vqgan.quantizer import VectorQuantizer
from vlp.objectives.vq import VQGANLoss
from vlp.tasks.optim import linear_warmup_decay, schedule_steps
from vlp.tasks.predict_files import Row, RowPredictionWriter, write_jsonl, write_png


class VQGANTask(RowPredictionWriter, LightningModule):
    """Autoencoder + optional discriminator, trained with :class:`~vlp.objectives.vq.VQGANLoss`.

    Args:
        model: the VQGAN.
        loss: the losses (its ``ema`` must match the quantizer's).
        discriminator: the PatchGAN; ``None`` trains a plain VQ-VAE (one optimiser).
        lr, disc_lr: Adam learning rates of the autoencoder and the discriminator (``disc_lr`` defaults to ``lr``).
        betas: Adam betas (taming: 0.5, 0.9).
        warmup: linear warm-up, a fraction of the batches when < 1, else a number of batches.
        end_lr_ratio: linear decay after warm-up down to this fraction of the rate (1.0: constant).
        predict_dir: where ``predict`` writes its grids and ``reconstructions.jsonl`` (module docstring);
            ``None``: ``<trainer.default_root_dir>/predictions``.
    """

    PREDICT_FILES = ("reconstructions_rank*_batch*.png", "reconstructions.jsonl")

    def __init__(
        self,
        model: VQGAN,
        loss: VQGANLoss,
        discriminator: NLayerDiscriminator | None = None,
        lr: float = 1e-4,
        disc_lr: float | None = None,
        betas: tuple[float, float] = (0.5, 0.9),
        warmup: float = 0.0,
        end_lr_ratio: float = 1.0,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model.quantize, VectorQuantizer):
            raise ValueError(
                f"VQGANTask trains a VQGAN with the vector quantizer; this model's is "
                f"{type(model.quantize).__name__} (quantizer: gumbel loads published weights for encoding "
                "and decoding, its training loss and temperature schedule are not part of this task)"
            )
        if loss.ema != model.quantize.ema:
            raise ValueError(
                f"VQGANTask: loss.ema={loss.ema} but the model's quantizer has ema={model.quantize.ema}"
            )
        self.save_hyperparameters(ignore=["model", "loss", "discriminator"])
        self.automatic_optimization = False
        self.model = model
        self.loss = loss
        self.discriminator = discriminator
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_l1 = MeanMetric()
        self.usage = CodebookUsage(model.num_codes)
        self.predict_dir = predict_dir

    def setup(self, stage: str) -> None:
        if self._trainer is not None and getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                f"VQGANTask: precision {self.trainer.precision} scales gradients, which the discriminator's "
                "step does not unscale; use 32-true or bf16-mixed"
            )

    @staticmethod
    def pixels(batch: Batch) -> Tensor:
        if batch.pixels is None:
            raise ValueError("VQGANTask: batch.pixels is None; the data module must provide images")
        return batch.pixels

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        if len(batch) == 0:
            return None
        pixels = self.pixels(batch)
        step = self.global_step
        out = self.model(pixels)
        disc = self.discriminator
        logits_gen = disc(out.reconstruction, frozen=True) if disc is not None else None
        generator = self.loss.generator(
            pixels, out.reconstruction, out.z_e, out.codes, logits_gen, self.model.last_layer, step
        )
        total = generator.loss
        logs = dict(generator.logs)
        if disc is not None:
            discriminated = self.loss.discriminator(
                disc(pixels.detach()), disc(out.reconstruction.detach()), step
            )
            total = total + discriminated.loss
            logs |= discriminated.logs
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(total)
        optimizers[0].step()
        for optimizer in optimizers[1:]:
            optimizer.optimizer.step()  # not counted in global_step: one step per batch (see the module doc)
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()
        batch_size = len(batch)
        self.log("train/loss", total.detach(), batch_size=batch_size, prog_bar=True)
        logs["perplexity"] = usage_from_counts(
            torch.bincount(out.ids.reshape(-1), minlength=self.model.num_codes).float()
        )["perplexity"]
        for name, value in logs.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return total.detach()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if len(batch) == 0:
            return
        pixels = self.pixels(batch)
        out = self.model(pixels)
        reconstruction = out.reconstruction.clamp(-1.0, 1.0)
        self.psnr.update((reconstruction + 1) / 2, (pixels + 1) / 2)
        self.val_l1.update(F.l1_loss(reconstruction, pixels, reduction="none").mean(dim=(1, 2, 3)))
        self.usage.update(out.ids)
        generator = self.loss.generator(
            pixels, out.reconstruction, out.z_e, out.codes, None, None, self.global_step
        )
        self.log("val/loss", generator.loss, batch_size=len(batch), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        usage = self.usage.compute()  # summed over processes
        self.log("val/psnr", self.psnr.compute(), prog_bar=True)
        self.log("val/l1", self.val_l1.compute())
        self.log("val/perplexity", usage["perplexity"])
        self.log("val/code_usage", usage["code_usage"], prog_bar=True)
        for metric in (self.psnr, self.val_l1, self.usage):
            metric.reset()

    @torch.no_grad()
    def predict_rows(self, batch: Batch, batch_idx: int) -> list[Row]:
        """Write the batch's grid (originals above reconstructions); one row per image."""
        pixels = self.pixels(batch)
        original = ((pixels.float().clamp(-1, 1) + 1) / 2).cpu()
        reconstruction = ((self.model(pixels).reconstruction.float().clamp(-1, 1) + 1) / 2).cpu()
        name = f"reconstructions_rank{self.global_rank}_batch{batch_idx:05d}.png"
        write_png(self.predict_path / name, torch.cat([original, reconstruction]), nrow=len(batch))
        if batch.pixel_mask is None:
            real = torch.ones(original.shape[0], *original.shape[2:])
        else:
            real = batch.pixel_mask.float().cpu()
        squared = ((reconstruction - original) ** 2).sum(dim=1)  # [B, H, W], summed over channels
        mse = (squared * real).sum(dim=(1, 2)) / (3 * real.sum(dim=(1, 2)))
        # data range 1; at most 100 dB, since JSON has no infinity for a perfect reconstruction
        psnr = (-10 * torch.log10(mse.clamp(min=1e-10))).tolist()
        return [
            {"key": key, "grid": name, "column": column, "psnr": value}
            for column, (key, value) in enumerate(zip(batch.keys, psnr))
        ]

    def write_predictions(self, rows: list[Row], folder: Path) -> list[Path]:
        return [write_jsonl(folder / "reconstructions.jsonl", rows)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the VQGAN's constructor arguments, so :meth:`VQGAN.from_checkpoint` can rebuild it."""
        checkpoint[CONFIG_KEY] = dict(self.model.config)

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``, shard the VQGAN and the discriminator with FSDP2 (each one root)."""
        from vlp.tasks.sharding import apply_fsdp2, check_sharded, fsdp2_mesh

        mesh = fsdp2_mesh(self)
        if mesh is None:
            return
        roots = [self.model] + ([self.discriminator] if self.discriminator is not None else [])
        apply_fsdp2(roots, mesh, bf16=str(self.trainer.precision).startswith("bf16"))
        trainable = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        check_sharded(trainable, "the VQGAN and the discriminator")

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        hp = self.hparams
        batches, warmup = schedule_steps(self.trainer, hp.warmup)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizers = [torch.optim.Adam(params, lr=hp.lr, betas=tuple(hp.betas))]
        if self.discriminator is not None:
            disc_lr = hp.disc_lr if hp.disc_lr is not None else hp.lr
            optimizers.append(
                torch.optim.Adam(self.discriminator.parameters(), lr=disc_lr, betas=tuple(hp.betas))
            )
        schedulers = [linear_warmup_decay(opt, warmup, batches, hp.end_lr_ratio) for opt in optimizers]
        return optimizers, schedulers
