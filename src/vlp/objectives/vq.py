"""VQGAN losses (taming-transformers' ``VQLPIPSWithDiscriminator``, split into functions and one module).

* reconstruction: L1 in pixel space, optionally plus a squared error (``mse_weight``: PSNR is a squared
  error, and on flat-coloured images L1's constant-size gradient lets the few large errors at object
  edges wait behind the many small ones of the background) and an optional perceptual loss (any module
  ``(x, y) -> loss``; LPIPS is the usual one, off by default because its weights cannot be downloaded here);
* codebook: ``||sg(z_e) - e||²`` (not with an EMA codebook, which is not trained by gradient) plus the
  commitment ``β ||z_e - sg(e)||²`` (van den Oord et al. 2017). taming's default ``legacy`` form puts β
  on the codebook term instead; this is the paper's;
* GAN: hinge (or non-saturating "vanilla") discriminator loss, generator loss ``-mean(D(x̂))`` weighted
  by the adaptive weight ``||∇_L rec|| / (||∇_L gan|| + 1e-4)`` at the decoder's last layer ``L``
  (clamped to [0, 1e4], times ``disc_weight``), switched on at ``disc_start``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlp.objectives.base import ObjectiveOutput


def codebook_losses(z_e: Tensor, codes: Tensor, beta: float, ema: bool) -> tuple[Tensor, Tensor]:
    """``(codebook, commitment)``: ``mse(e, sg(z_e))`` (0 with an EMA codebook) and ``β mse(z_e, sg(e))``."""
    commitment = beta * F.mse_loss(z_e, codes.detach())
    codebook = z_e.new_zeros(()) if ema else F.mse_loss(codes, z_e.detach())
    return codebook, commitment


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``(mean(relu(1 - D(x))) + mean(relu(1 + D(x̂)))) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``(mean(softplus(-D(x))) + mean(softplus(D(x̂)))) / 2``."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """``||∇_last rec_loss|| / (||∇_last g_loss|| + 1e-4)``, clamped to ``[0, max_weight]``, detached.

    Both gradients keep the graph (the total loss is back-propagated afterwards) and are taken only
    with respect to ``last_layer``, so nothing accumulates into ``.grad``.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class VQGANLoss(nn.Module):
    """Generator (autoencoder) and discriminator losses of a VQGAN.

    Args:
        beta: commitment weight β.
        ema: the quantizer's codebook is an EMA (no codebook term).
        codebook_weight: weight of codebook + commitment.
        pixel_weight: weight of the L1 reconstruction.
        mse_weight: weight of a mean squared error added to it (0: taming's L1 only).
        perceptual: optional perceptual loss module ``(x, x̂) -> scalar or per-sample``; pluggable (LPIPS).
        perceptual_weight: its weight (taming: 1.0 with LPIPS).
        disc_weight: the GAN generator loss's weight (on top of the adaptive weight when ``adaptive``).
        disc_start: global step from which the GAN terms count (both generator and discriminator).
        disc_loss: ``"hinge"`` or ``"vanilla"``.
        adaptive: balance the GAN gradient against the reconstruction's at the decoder's last layer.
    """

    def __init__(
        self,
        beta: float = 0.25,
        ema: bool = False,
        codebook_weight: float = 1.0,
        pixel_weight: float = 1.0,
        mse_weight: float = 0.0,
        perceptual: nn.Module | None = None,
        perceptual_weight: float = 1.0,
        disc_weight: float = 1.0,
        disc_start: int = 0,
        disc_loss: Literal["hinge", "vanilla"] = "hinge",
        adaptive: bool = True,
    ) -> None:
        super().__init__()
        if disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"VQGANLoss: disc_loss must be 'hinge' or 'vanilla', got {disc_loss!r}")
        if pixel_weight < 0 or mse_weight < 0:
            raise ValueError(
                f"VQGANLoss: pixel_weight and mse_weight must be >= 0, got {pixel_weight}, {mse_weight}"
            )
        self.beta = beta
        self.ema = ema
        self.codebook_weight = codebook_weight
        self.pixel_weight = pixel_weight
        self.mse_weight = mse_weight
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.disc_loss = disc_loss
        self.adaptive = adaptive

    def gan_active(self, step: int) -> bool:
        return self.disc_weight > 0 and step >= self.disc_start

    def reconstruction(self, pixels: Tensor, reconstruction: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``pixel_weight * L1 (+ mse_weight * MSE) (+ perceptual_weight * perceptual)`` and its parts."""
        l1 = F.l1_loss(reconstruction, pixels)
        loss = self.pixel_weight * l1
        logs = {"l1": l1.detach()}
        if self.mse_weight > 0:
            mse = F.mse_loss(reconstruction, pixels)
            loss = loss + self.mse_weight * mse
            logs["mse"] = mse.detach()
        if self.perceptual is not None and self.perceptual_weight > 0:
            perceptual = self.perceptual(pixels, reconstruction).mean()
            loss = loss + self.perceptual_weight * perceptual
            logs["perceptual"] = perceptual.detach()
        return loss, logs

    def generator(
        self,
        pixels: Tensor,
        reconstruction: Tensor,
        z_e: Tensor,
        codes: Tensor,
        logits_fake: Tensor | None,
        last_layer: Tensor | None,
        step: int,
    ) -> ObjectiveOutput:
        """The autoencoder's loss. ``logits_fake`` are the discriminator's logits on ``reconstruction``
        computed without its weights in the graph; ``None`` (no discriminator) leaves the GAN term out."""
        rec, logs = self.reconstruction(pixels, reconstruction)
        codebook, commitment = codebook_losses(z_e, codes, self.beta, self.ema)
        loss = rec + self.codebook_weight * (codebook + commitment)
        logs |= {"codebook": codebook.detach(), "commitment": commitment.detach()}
        if logits_fake is not None:
            g_loss = -logits_fake.mean()
            weight = torch.zeros((), device=pixels.device)
            if self.gan_active(step):
                if self.adaptive and torch.is_grad_enabled():
                    if last_layer is None:
                        raise ValueError("VQGANLoss: adaptive=True needs the decoder's last layer")
                    weight = adaptive_weight(rec, g_loss, last_layer) * self.disc_weight
                else:
                    weight = torch.full((), self.disc_weight, device=pixels.device)
            # weight 0 before disc_start keeps the discriminator in the graph (every parameter of a
            # DDP model must take part in each backward)
            loss = loss + weight * g_loss
            logs |= {"g_loss": g_loss.detach(), "d_weight": weight}
        return ObjectiveOutput(loss=loss, logs=logs)

    def discriminator(self, logits_real: Tensor, logits_fake: Tensor, step: int) -> ObjectiveOutput:
        """The discriminator's loss on real images and (detached) reconstructions; 0 before ``disc_start``."""
        d = hinge_d_loss if self.disc_loss == "hinge" else vanilla_d_loss
        raw = d(logits_real, logits_fake)
        factor = 1.0 if self.gan_active(step) else 0.0
        logs = {
            "disc_loss": raw.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
        return ObjectiveOutput(loss=factor * raw, logs=logs)
