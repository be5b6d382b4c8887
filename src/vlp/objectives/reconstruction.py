"""ERNIE-ViLG's end-to-end loss: pixels reconstructed through the VQGAN decoder from the generator's states.

In end-to-end training the last layer's hidden states of the image slots (text→image pass, teacher
forced) are mapped non-linearly into the codebook space (:meth:`ERNIEViLG.map_to_codebook`), turned
into decoder latents by a **bridge**, decoded by the VQGAN decoder and compared with the input pixels,
so the reconstruction loss trains the generator (and the decoder, when the task leaves it trainable).

Bridges from the mapped vector ``z`` to the decoder's input (``E`` the ``[K, C]`` codebook):

- ``straight_through`` (default): the forward pass feeds the nearest code vector ``e_k``, the backward
  pass treats that choice as the identity (``z + sg(e_k - z)``, VQ-VAE's estimator) and a commitment
  term ``beta * ||z - sg(e_k)||^2`` keeps ``z`` near the codebook, where the identity is a good
  approximation. Chosen because the decoder then sees exactly the inputs it sees at generation time
  (code vectors), so end-to-end training cannot drift the decoder towards latents sampling never produces.
  It does not keep the decoder's code→pixel map, though: the code fed is the head's nearest guess, not the
  image's own code, so a *trained* decoder learns to render the head's codes. On shapes (700 steps,
  ``train_decoder: true``) it then drew the VQGAN's own codes of real images so badly that the judge found
  none of their objects (benchmarks/RESULTS.md, "ERNIE-ViLG"); with a frozen decoder this cannot happen.
- ``soft``: ``softmax(-||z - e_k||^2 / tau) @ E``, a convex mix of code vectors: fully differentiable,
  but the decoder sees mixtures it was not trained on (``tau -> 0`` approaches ``straight_through``'s forward).
- ``direct``: ``z`` as it is (the paper's wording: "mapped ... to the codebook embedding space and fed to
  the decoder").

The task attaches ``decode_latents`` (the VQGAN decoder on ``[B, C, h, w]``) and ``codebook`` to the
output; the target is ``batch.pixels`` in the VQGAN's pixel range (vlp normalises to [-1, 1], the
taming VQGAN's range). Padded pixels (``batch.pixel_mask`` False) do not count.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.batch import Batch
from vlp.models.ernie_vilg.model import ERNIEViLGOutput
from vlp.objectives.base import Objective, ObjectiveOutput

Bridge = Literal["straight_through", "soft", "direct"]
PixelLoss = Literal["l1", "l2"]


def bridge_latents(
    z: Tensor, codebook: Tensor, bridge: Bridge, temperature: float = 1.0
) -> tuple[Tensor, Tensor | None]:
    """Mapped vectors ``z [B, C, h, w]`` → decoder latents ``[B, C, h, w]`` and, for
    ``straight_through``, the commitment term (module docstring)."""
    if bridge == "direct":
        return z, None
    if codebook.dim() != 2 or codebook.shape[1] != z.shape[1]:
        raise ValueError(
            f"codebook must be [K, {z.shape[1]}] (the mapped width), got {tuple(codebook.shape)}"
        )
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # [B*h*w, C]
    codebook = codebook.to(flat.dtype)
    distances = torch.cdist(flat, codebook).pow(2)  # [B*h*w, K]
    if bridge == "straight_through":
        nearest = codebook[distances.argmin(dim=1)]
        commitment = F.mse_loss(flat, nearest.detach())
        chosen = flat + (nearest - flat).detach()
    elif bridge == "soft":
        chosen = torch.softmax(-distances / temperature, dim=1) @ codebook
        commitment = None
    else:
        raise ValueError(f"bridge must be 'straight_through', 'soft' or 'direct', got {bridge!r}")
    batch, channels, h, w = z.shape
    return chosen.view(batch, h, w, channels).permute(0, 3, 1, 2), commitment


class ReconstructionObjective(Objective):
    """Pixel L1 or L2 between the VQGAN decoding of the mapped image states and the input image.

    Args:
        loss: ``l1`` or ``l2`` (mean squared error).
        bridge: ``straight_through``, ``soft`` or ``direct`` (module docstring).
        temperature: the ``soft`` bridge's ``tau``.
        commitment: weight of the ``straight_through`` commitment term.
    """

    view = "text_to_image"

    def __init__(
        self,
        loss: PixelLoss = "l1",
        bridge: Bridge = "straight_through",
        temperature: float = 1.0,
        commitment: float = 0.25,
    ) -> None:
        super().__init__()
        if loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
        if bridge not in ("straight_through", "soft", "direct"):
            raise ValueError(f"bridge must be 'straight_through', 'soft' or 'direct', got {bridge!r}")
        if temperature <= 0 or commitment < 0:
            raise ValueError(f"temperature must be > 0 and commitment >= 0, got {temperature}, {commitment}")
        self.loss, self.bridge, self.temperature, self.commitment = loss, bridge, temperature, commitment

    def forward(self, outputs: ERNIEViLGOutput, batch: Batch) -> ObjectiveOutput:
        if not isinstance(outputs, ERNIEViLGOutput) or outputs.direction != "text_to_image":
            raise ValueError("ReconstructionObjective reads the text_to_image ERNIEViLGOutput")
        if outputs.decode_latents is None or (self.bridge != "direct" and outputs.codebook is None):
            raise ValueError(
                "ReconstructionObjective needs the VQGAN decoder (outputs.decode_latents) and codebook "
                "(outputs.codebook): train it through ERNIEViLGTask, which attaches them"
            )
        if batch.pixels is None:
            raise ValueError("ReconstructionObjective needs batch.pixels (the images to reconstruct)")
        z = outputs.model.map_to_codebook(outputs.image_states)
        latents, commitment = bridge_latents(z, outputs.codebook, self.bridge, self.temperature)
        recon = outputs.decode_latents(latents)
        target = batch.pixels
        if recon.shape != target.shape:
            raise ValueError(
                f"decoded images {tuple(recon.shape)} differ from batch.pixels {tuple(target.shape)}: the "
                "VQGAN's grid and the image size must agree"
            )
        error = (recon.float() - target.float()).abs()
        if self.loss == "l2":
            error = error.pow(2)
        if batch.pixel_mask is not None:
            weight = batch.pixel_mask[:, None].to(error.dtype).expand_as(error)
            pixel_loss = (error * weight).sum() / weight.sum().clamp_min(1.0)
        else:
            pixel_loss = error.mean()
        logs = {f"recon_{self.loss}": pixel_loss.detach()}
        total = pixel_loss
        if commitment is not None:
            total = total + self.commitment * commitment
            logs["recon_commitment"] = commitment.detach()
        return ObjectiveOutput(total, logs)
