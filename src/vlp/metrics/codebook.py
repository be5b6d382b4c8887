"""Codebook usage of a vector quantizer over an evaluation: perplexity and the fraction of codes used."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def usage_from_counts(counts: Tensor) -> dict[str, Tensor]:
    """``perplexity = exp(entropy of the code histogram)`` (= number of codes for uniform use) and
    ``code_usage`` = fraction of codes picked at least once."""
    total = counts.sum().clamp(min=1)
    p = counts / total
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum()
    return {"perplexity": entropy.exp(), "code_usage": (counts > 0).float().mean()}


class CodebookUsage(Metric):
    """Histogram of code ids accumulated on device (summed over processes), read by :func:`usage_from_counts`.

    Computed over everything seen since the last reset (a whole validation epoch), not per batch as
    taming logs it: per-batch perplexity undercounts a codebook whose codes are spread across images.
    """

    full_state_update = False

    def __init__(self, num_codes: int) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.add_state("counts", default=torch.zeros(num_codes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ids: Tensor) -> None:
        flat = ids.reshape(-1)
        self.counts += torch.bincount(flat, minlength=self.num_codes)[: self.num_codes].to(self.counts.dtype)

    def compute(self) -> dict[str, Tensor]:
        return {name: value.float() for name, value in usage_from_counts(self.counts).items()}
