"""The VQGAN's Gumbel-softmax quantizer (Jang et al. 2017), the one of taming-transformers' ``GumbelVQ``.

A 1x1 conv ``proj`` turns each feature vector into logits over the ``num_codes`` codes; the quantized
vector is the codebook row (``embedding``: ``num_codes x code_dim``) the logits pick.

* Inference (``eval()``): the code is the argmax of the logits, so an image always gives the same
  tokens. (taming's ``GumbelQuantize`` draws Gumbel noise in eval mode too; the argmax is the mode of that
  draw and what a tokenizer needs: encode to ids, decode from ids.)
* Training: a Gumbel-softmax sample at ``temperature`` over the codes; with ``straight_through`` (taming's
  default) the forward value is the one-hot of the sampled code and the gradient that of the soft
  sample, else the forward value is the soft mixture of codebook rows. taming anneals the temperature
  during training (its published f8 / 8192 model from 0.9 down to 1e-6, cosine over 1M steps): set
  :attr:`GumbelQuantizer.temperature` from the training loop.

The output has the fields of :class:`~vlp.models.vqgan.quantizer.QuantizerOutput` plus ``kl``:
``KL(softmax(logits) || uniform)`` averaged over positions, the prior term taming adds to the loss
(weighted by its ``kl_weight``, 1e-8 for the published model). The codebook and commitment terms of a
vector quantizer do not apply: the codebook is trained by the gradient through ``z_q``.

taming names the codebook ``embed``; here it is ``embedding``, as in
:class:`~vlp.models.vqgan.quantizer.VectorQuantizer`, so code that reads ``quantize.embedding.weight``
(the token embedder's initialisation, ERNIE-ViLG's end-to-end path) works with either quantizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlp.models.vqgan.quantizer import QuantizerOutput


@dataclass
class GumbelQuantizerOutput(QuantizerOutput):
    """:class:`QuantizerOutput` plus the prior term."""

    kl: Tensor  # scalar fp32: mean over positions of KL(softmax(logits) || uniform over the codes)


def kl_to_uniform(logits: Tensor) -> Tensor:
    """Mean over positions of ``Σ_n q_n log(q_n N)``, ``q = softmax(logits)`` over dim 1 (``N`` codes), in fp32."""
    log_q = F.log_softmax(logits.float(), dim=1)
    return (log_q.exp() * (log_q + math.log(logits.shape[1]))).sum(dim=1).mean()


class GumbelQuantizer(nn.Module):
    """Quantization of ``[B, code_dim, h, w]`` feature maps by logits over ``num_codes`` codes.

    Args:
        num_codes: codebook size (taming's ``n_embed``).
        code_dim: code width, and the width of the features the logits are computed from (taming's
            ``embed_dim``; its ``GumbelVQ`` feeds ``quant_conv``'s output, ``embed_dim`` wide, to ``proj``).
        temperature: initial Gumbel-softmax temperature (training only); mutable attribute.
        straight_through: in training, hard one-hot forward with the soft sample's gradient.
    """

    def __init__(
        self, num_codes: int, code_dim: int, temperature: float = 1.0, straight_through: bool = True
    ) -> None:
        super().__init__()
        if num_codes < 1 or code_dim < 1:
            raise ValueError(
                f"GumbelQuantizer: num_codes and code_dim must be positive, got {num_codes}, {code_dim}"
            )
        if temperature <= 0:
            raise ValueError(f"GumbelQuantizer: temperature must be > 0, got {temperature}")
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.temperature = temperature
        self.straight_through = straight_through
        self.proj = nn.Conv2d(code_dim, num_codes, 1)
        self.embedding = nn.Embedding(num_codes, code_dim)

    def forward(self, z: Tensor) -> GumbelQuantizerOutput:
        if z.ndim != 4 or z.shape[1] != self.code_dim:
            raise ValueError(
                f"GumbelQuantizer: input must be [B, {self.code_dim}, h, w], got {tuple(z.shape)}"
            )
        logits = self.proj(z)
        if not self.training:
            ids = logits.argmax(dim=1)
            codes = self.lookup(ids)
            return GumbelQuantizerOutput(z_q=codes, ids=ids, z_e=z, codes=codes, kl=kl_to_uniform(logits))
        sample = F.gumbel_softmax(logits, tau=self.temperature, hard=self.straight_through, dim=1)
        ids = sample.argmax(dim=1)
        z_q = torch.einsum("bnhw,nd->bdhw", sample, self.embedding.weight)
        return GumbelQuantizerOutput(
            z_q=z_q, ids=ids, z_e=z, codes=self.lookup(ids), kl=kl_to_uniform(logits)
        )

    def lookup(self, ids: Tensor) -> Tensor:
        """Code vectors of ``ids [B, h, w]`` as a ``[B, C, h, w]`` map."""
        return self.embedding(ids).permute(0, 3, 1, 2)
