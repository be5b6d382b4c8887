"""PatchGAN discriminator: taming's keys, patch logits, the frozen pass."""

from __future__ import annotations

import pytest
import torch

from vlp.models.vqgan.discriminator import NLayerDiscriminator


def test_keys_follow_tamings_sequential() -> None:
    keys = set(NLayerDiscriminator(ndf=8).state_dict())
    convs_without_bias = {"main.2.weight", "main.5.weight", "main.8.weight"}
    assert {"main.0.weight", "main.0.bias", "main.11.weight", "main.11.bias"} <= keys
    assert convs_without_bias <= keys and not {k.replace("weight", "bias") for k in convs_without_bias} & keys
    assert {"main.3.running_mean", "main.9.num_batches_tracked"} <= keys


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_frozen_pass_equals_the_plain_one_and_trains_no_weight(norm: str) -> None:
    disc = NLayerDiscriminator(ndf=8, n_layers=2, norm=norm).train()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    plain = disc(x)
    frozen = disc(x, frozen=True)
    assert plain.shape == (2, 1, 6, 6)  # one logit per overlapping patch
    torch.testing.assert_close(frozen, plain)
    frozen.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())


def test_group_norm_logits_do_not_depend_on_the_rest_of_the_batch() -> None:
    disc = NLayerDiscriminator(ndf=16, n_layers=2, norm="group").train()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(disc(x)[:2], disc(x[:2]))


def test_unknown_norm_is_named() -> None:
    with pytest.raises(ValueError, match="norm must be"):
        NLayerDiscriminator(norm="layer")  # type: ignore[arg-type]
