"""PatchGAN discriminator (pix2pix; taming-transformers' ``NLayerDiscriminator``), keys ``main.<i>.*`` as taming's."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn


class NLayerDiscriminator(nn.Module):
    """4x4 convs, stride 2 for ``n_layers`` levels, then two stride-1 convs: one logit per image patch.

    Args:
        in_channels, ndf, n_layers: as taming's ``input_nc``, ``ndf``, ``n_layers``.
        norm: ``"batch"`` (taming's default, convs before a norm have no bias), ``"group"`` (GroupNorm,
            one group per 16 channels; statistics per sample, so a batch split over processes gives the
            same logits as one process) or ``"none"``.

    ``forward(x, frozen=True)`` computes the same logits with every weight detached: the generator's GAN
    loss then reaches the image but no discriminator weight, so generator and discriminator losses can
    share one backward pass (one gradient reduction per step under DDP / FSDP2).
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: Literal["batch", "group", "none"] = "batch",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "group", "none"):
            raise ValueError(f"NLayerDiscriminator: norm must be 'batch', 'group' or 'none', got {norm!r}")
        use_bias = norm != "batch"

        def norm_layer(channels: int) -> list[nn.Module]:
            if norm == "batch":
                return [nn.BatchNorm2d(channels)]
            if norm == "group":
                return [nn.GroupNorm(max(1, channels // 16), channels)]
            return []

        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=use_bias)]
            layers += norm_layer(ndf * mult)
            layers += [nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        if not frozen:
            return self.main(x)
        for layer in self.main:
            x = _frozen_call(layer, x)
        return x


def _frozen_call(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` with the layer's weights detached (running statistics update as in ``layer(x)``)."""

    def d(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach()

    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, d(layer.weight), d(layer.bias), layer.stride, layer.padding)
    if isinstance(layer, nn.BatchNorm2d):
        training = layer.training or layer.running_mean is None
        if layer.training and layer.num_batches_tracked is not None:
            layer.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            layer.running_mean,
            layer.running_var,
            d(layer.weight),
            d(layer.bias),
            training,
            layer.momentum,
            layer.eps,
        )
    if isinstance(layer, nn.GroupNorm):
        return F.group_norm(x, layer.num_groups, d(layer.weight), d(layer.bias), layer.eps)
    return layer(x)  # activations: no weights


def _init_weights(module: nn.Module) -> None:
    """taming's ``weights_init``: convs N(0, 0.02), norm scales N(1, 0.02), norm shifts 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0.0)
