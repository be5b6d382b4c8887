"""VQGAN losses on hand-computed cases: codebook/commitment, hinge and vanilla, the adaptive weight, disc_start."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vlp.objectives.vq import VQGANLoss, adaptive_weight, codebook_losses, hinge_d_loss, vanilla_d_loss


def test_commitment_is_beta_times_mse_and_trains_only_the_encoder() -> None:
    z_e = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    codes = torch.tensor([[0.0, 2.0], [1.0, 1.0]], requires_grad=True)
    codebook, commitment = codebook_losses(z_e, codes, beta=0.25, ema=False)
    mse = (1.0 + 0.0 + 4.0 + 4.0) / 4  # squared differences 1, 0, 4, 4
    assert commitment.item() == pytest.approx(0.25 * mse)
    assert codebook.item() == pytest.approx(mse)
    commitment.backward()
    assert codes.grad is None  # the commitment term moves the encoder output only
    torch.testing.assert_close(z_e.grad, 0.25 * 2 * (z_e - codes).detach() / 4)
    codebook.backward()
    torch.testing.assert_close(codes.grad, 2 * (codes - z_e).detach() / 4)


def test_ema_codebook_has_no_codebook_term() -> None:
    codebook, commitment = codebook_losses(torch.ones(2, 2), torch.zeros(2, 2), beta=0.5, ema=True)
    assert codebook.item() == 0.0 and commitment.item() == pytest.approx(0.5)


def test_hinge_and_vanilla_discriminator_losses_on_known_logits() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x): 0, 0.5, 2 -> mean 5/6
    fake = torch.tensor([-3.0, 0.0])  # relu(1 + x): 0, 1 -> mean 1/2
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1 / 2))
    softplus = torch.nn.functional.softplus
    expected = 0.5 * (softplus(-real).mean() + softplus(fake).mean())
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected.item())
    assert hinge_d_loss(torch.full((4,), 1.0), torch.full((4,), -1.0)).item() == 0.0  # margins met


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (3.0 * w).sum()  # gradient (3, 3): norm 3 sqrt 2
    gan = (w**2).sum()  # gradient 2w = (2, 4): norm sqrt 20
    expected = 3 * 2**0.5 / (20**0.5 + 1e-4)
    assert adaptive_weight(rec, gan, w).item() == pytest.approx(expected, rel=1e-6)
    assert w.grad is None  # nothing accumulated
    tiny = adaptive_weight(rec, 1e-9 * w.sum(), w)
    assert tiny.item() == pytest.approx(1e4)  # clamped


class HalfL2(nn.Module):
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (x - y).pow(2).flatten(1).mean(1)


def test_generator_loss_adds_perceptual_codebook_and_gan_terms_after_disc_start() -> None:
    torch.manual_seed(0)
    last = nn.Conv2d(2, 3, 1)
    features = torch.randn(2, 2, 4, 4)
    pixels = torch.rand(2, 3, 4, 4)
    z_e, codes = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    loss = VQGANLoss(beta=0.25, perceptual=HalfL2(), perceptual_weight=0.5, disc_weight=0.3, disc_start=10)
    reconstruction = last(features)
    logits = (reconstruction**2).mean(dim=(1, 2, 3))
    before = loss.generator(pixels, reconstruction, z_e, codes, logits, last.weight, step=9)
    l1 = (reconstruction - pixels).abs().mean()
    perceptual = HalfL2()(pixels, reconstruction).mean()
    vq = 1.25 * (z_e - codes).pow(2).mean()
    torch.testing.assert_close(before.loss, l1 + 0.5 * perceptual + vq)
    assert before.logs["d_weight"].item() == 0.0
    after = loss.generator(pixels, reconstruction, z_e, codes, logits, last.weight, step=10)
    weight = 0.3 * adaptive_weight(l1 + 0.5 * perceptual, -logits.mean(), last.weight)
    torch.testing.assert_close(after.logs["d_weight"], weight)
    torch.testing.assert_close(after.loss, l1 + 0.5 * perceptual + vq - weight * logits.mean())
    fixed = VQGANLoss(disc_weight=0.3, adaptive=False)
    out = fixed.generator(pixels, reconstruction, z_e, codes, logits, None, step=0)
    assert out.logs["d_weight"].item() == pytest.approx(0.3)


def test_discriminator_loss_counts_from_disc_start() -> None:
    loss = VQGANLoss(disc_start=5)
    real, fake = torch.tensor([0.0]), torch.tensor([0.0])
    assert loss.discriminator(real, fake, step=4).loss.item() == 0.0
    assert loss.discriminator(real, fake, step=5).loss.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="disc_loss must be"):
        VQGANLoss(disc_loss="wgan")  # type: ignore[arg-type]


def test_mse_weight_adds_the_squared_error_and_pulls_hardest_on_the_largest_error() -> None:
    pixels = torch.zeros(1, 1, 1, 4)
    reconstruction = torch.tensor([[[[0.1, -0.1, 0.1, 1.0]]]], requires_grad=True)
    l1 = (0.1 + 0.1 + 0.1 + 1.0) / 4
    mse = (0.01 * 3 + 1.0) / 4
    loss, logs = VQGANLoss(pixel_weight=1.0, mse_weight=2.0).reconstruction(pixels, reconstruction)
    assert loss.item() == pytest.approx(l1 + 2.0 * mse)
    assert logs["mse"].item() == pytest.approx(mse)
    loss.backward()
    grad = reconstruction.grad.flatten()
    # L1 alone gives every pixel the same |gradient| 1/4; the squared error adds 4 * error / 4
    torch.testing.assert_close(grad, torch.tensor([0.35, -0.35, 0.35, 1.25]))
    plain, plain_logs = VQGANLoss().reconstruction(pixels, reconstruction)
    assert plain.item() == pytest.approx(l1) and "mse" not in plain_logs
    with pytest.raises(ValueError, match="mse_weight"):
        VQGANLoss(mse_weight=-1.0)
