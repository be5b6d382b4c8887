"""The VQGAN's vector quantizer: nearest code, straight-through gradient, optional EMA codebook.

Attribute names follow taming-transformers' ``VectorQuantizer`` (``embedding``: ``num_codes x code_dim``),
so its checkpoints map key by key. Losses are not computed here (see :mod:`vlp.objectives.vq`): the
quantizer returns the encoder output ``z_e`` and the chosen codes, from which the codebook and
commitment terms follow.

With ``ema=True`` the codebook is not trained by gradient: it follows an exponential moving average of
the encoder outputs assigned to each code (VQ-VAE, van den Oord et al. 2017, appendix; Razavi et al.
2019). The codebook is then a buffer (``embedding.weight`` keeps its name and shape) together with the
statistics ``cluster_size`` and ``embed_avg``: a buffer, not a parameter, so that under FSDP2 (which shards
parameters and swaps them during forward) the in-forward update lands in the tensor that is kept, and
under DDP / FSDP2 every process applies the same update (the statistics are all-reduced).

Dead codes (EMA usage below ``dead_code_threshold`` assignments per batch) are restarted at encoder
outputs of the current batch, drawn with probability proportional to their squared distance from their
code, so the worst-served inputs get codes of their own (Dhariwal et al. 2020, Jukebox, restart at
random encodings; the distance weighting is k-means++'s). The draw is broadcast from the first process,
so all processes keep one codebook; nothing syncs with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """``z_q`` carries the straight-through gradient to ``z_e``; ``codes`` are the plain code vectors."""

    z_q: Tensor  # [B, C, h, w], forward value = codes, gradient flows to z_e
    ids: Tensor  # [B, h, w] long
    z_e: Tensor  # [B, C, h, w] encoder output (after quant_conv)
    codes: Tensor  # [B, C, h, w] the codebook rows chosen (gradient reaches the codebook when not EMA)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantization of ``[B, C, h, w]`` feature maps against ``num_codes`` codes.

    Args:
        num_codes: codebook size (taming's ``n_e``).
        code_dim: code width (taming's ``e_dim``, the VQGAN's ``embed_dim``).
        ema: update codes by exponential moving average instead of gradient.
        decay: EMA decay.
        eps: Laplace smoothing of the EMA cluster sizes.
        dead_code_threshold: with ``ema``, restart codes whose EMA usage (assignments per global batch)
            falls below this; 0 disables restarts.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        if num_codes < 1 or code_dim < 1:
            raise ValueError(
                f"VectorQuantizer: num_codes and code_dim must be positive, got {num_codes}, {code_dim}"
            )
        if dead_code_threshold > 0 and not ema:
            raise ValueError(
                "VectorQuantizer: dead_code_threshold > 0 needs ema=True (restarts rewrite the EMA statistics)"
            )
        if dead_code_threshold < 0:
            raise ValueError(f"VectorQuantizer: dead_code_threshold must be >= 0, got {dead_code_threshold}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"VectorQuantizer: decay must be in [0, 1), got {decay}")
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.ema = ema
        self.decay = decay
        self.eps = eps
        self.dead_code_threshold = dead_code_threshold
        self.embedding = nn.Embedding(num_codes, code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)  # taming's init
        if ema:
            weight = self.embedding.weight.detach().clone()
            del self.embedding.weight
            self.embedding.register_buffer("weight", weight)
            # code = embed_avg / cluster_size. Without restarts the statistics start at one use of each
            # initial code (an unused code keeps its vector instead of being divided by the smoothing
            # epsilon); with restarts at zero use, so every code the first batch leaves unused is
            # restarted at an encoder output on the first step (a data-dependent initialisation).
            initial = 0.0 if dead_code_threshold > 0 else 1.0
            self.register_buffer("cluster_size", torch.full((num_codes,), initial))
            self.register_buffer("embed_avg", weight * initial)

    def forward(self, z: Tensor) -> QuantizerOutput:
        batch, channels, h, w = z.shape
        if channels != self.code_dim:
            raise ValueError(f"VectorQuantizer: input has {channels} channels, codes have {self.code_dim}")
        flat = z.permute(0, 2, 3, 1).reshape(-1, channels)
        distances, ids = self.nearest(flat)
        codes = self.embedding(ids).view(batch, h, w, channels).permute(0, 3, 1, 2)
        if self.ema and self.training:
            self._ema_update(flat.detach().float(), ids, distances.detach())
        z_q = z + (codes - z).detach()
        return QuantizerOutput(z_q=z_q, ids=ids.view(batch, h, w), z_e=z, codes=codes)

    def nearest(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """Squared distance to the nearest code and its index, for each row of ``flat`` ``[N, C]`` (fp32)."""
        weight = self.embedding.weight.float()
        x = flat.detach().float()
        d = x.pow(2).sum(1, keepdim=True) + weight.pow(2).sum(1)[None] - 2.0 * x @ weight.t()
        distances, ids = d.min(dim=1)
        return distances.clamp(min=0.0), ids

    def lookup(self, ids: Tensor) -> Tensor:
        """Code vectors of ``ids [B, h, w]`` as a ``[B, C, h, w]`` map."""
        return self.embedding(ids).permute(0, 3, 1, 2)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, ids: Tensor, distances: Tensor) -> None:
        counts = torch.bincount(ids, minlength=self.num_codes).to(flat.dtype)
        sums = torch.zeros(self.num_codes, self.code_dim, dtype=flat.dtype, device=flat.device)
        sums.index_add_(0, ids, flat)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)  # statistics of the global batch, as one process would see them
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        if self.dead_code_threshold > 0:
            self._restart_dead(flat, distances)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.embedding.weight.copy_(self.embed_avg / smoothed[:, None])

    def _restart_dead(self, flat: Tensor, distances: Tensor) -> None:
        dead = self.cluster_size < self.dead_code_threshold
        picks = torch.multinomial(distances + 1e-12, self.num_codes, replacement=True)
        candidates = flat[picks]
        if _distributed():
            dist.broadcast(candidates, src=0)
        # A restarted code starts exactly at the threshold (its vector = embed_avg / cluster_size is the
        # candidate): unless inputs pick it in the next step it is dead again and restarted at a fresh
        # input, so no code waits for many steps at a position the encoder has moved away from (Jukebox).
        size = torch.full_like(self.cluster_size, self.dead_code_threshold)
        self.cluster_size.copy_(torch.where(dead, size, self.cluster_size))
        self.embed_avg.copy_(
            torch.where(dead[:, None], candidates * self.dead_code_threshold, self.embed_avg)
        )
