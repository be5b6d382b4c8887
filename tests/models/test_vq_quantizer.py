"""VectorQuantizer: nearest codes, straight-through values, EMA updates, dead-code restarts."""

from __future__ import annotations

import pytest
import torch

from vlp.models.vqgan.quantizer import VectorQuantizer


def set_codes(quantizer: VectorQuantizer, codes: torch.Tensor) -> None:
    with torch.no_grad():
        quantizer.embedding.weight.copy_(codes)
        if quantizer.ema:
            quantizer.embed_avg.copy_(codes)
            quantizer.cluster_size.fill_(1.0)


def as_map(vectors: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` → ``[1, C, 1, N]``."""
    return vectors.t()[None, :, None, :]


def test_picks_the_nearest_code_and_passes_the_gradient_straight_through() -> None:
    quantizer = VectorQuantizer(3, 2)
    set_codes(quantizer, torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]]))
    z = as_map(torch.tensor([[0.9, 1.2], [-1.5, 0.1], [0.1, -0.2]])).requires_grad_()
    out = quantizer(z)
    assert out.ids.flatten().tolist() == [1, 2, 0]
    torch.testing.assert_close(out.z_q, out.codes)
    weights = torch.randn_like(z)
    (out.z_q * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # identity gradient to the encoder output


def test_ema_moves_codes_toward_their_assigned_inputs() -> None:
    quantizer = VectorQuantizer(2, 2, ema=True, decay=0.9)
    set_codes(quantizer, torch.tensor([[0.0, 0.0], [5.0, 5.0]]))
    inputs = torch.tensor([[1.0, 0.0], [1.0, 2.0], [4.0, 4.0]])  # two to code 0 (mean (1, 1)), one to code 1
    before = quantizer.embedding.weight.clone()
    quantizer.train()(as_map(inputs))
    after = quantizer.embedding.weight
    means = torch.tensor([[1.0, 1.0], [4.0, 4.0]])
    assert ((after - means).norm(dim=1) < (before - means).norm(dim=1)).all()
    # the exact EMA step: avg = 0.9 * avg + 0.1 * sum, size = 0.9 * 1 + 0.1 * count, code = avg / size
    expected_size = torch.tensor([0.9 + 0.2, 0.9 + 0.1])
    expected_avg = 0.9 * before + 0.1 * torch.tensor([[2.0, 2.0], [4.0, 4.0]])
    torch.testing.assert_close(quantizer.cluster_size, expected_size)
    torch.testing.assert_close(after, expected_avg / expected_size[:, None], atol=1e-4, rtol=1e-4)
    frozen = after.clone()
    quantizer.eval()(as_map(inputs))  # no updates in eval mode
    torch.testing.assert_close(quantizer.embedding.weight, frozen)


def test_ema_codebook_gets_no_gradient_and_unused_codes_stay_put() -> None:
    quantizer = VectorQuantizer(3, 2, ema=True, decay=0.5)
    set_codes(quantizer, torch.tensor([[0.0, 0.0], [5.0, 5.0], [-9.0, 9.0]]))
    quantizer(as_map(torch.tensor([[0.5, 0.5], [4.0, 5.0]])))
    torch.testing.assert_close(quantizer.embedding.weight[2], torch.tensor([-9.0, 9.0]), atol=1e-3, rtol=1e-3)
    assert not quantizer.embedding.weight.requires_grad


def test_dead_codes_are_restarted_at_badly_served_inputs() -> None:
    quantizer = VectorQuantizer(4, 2, ema=True, decay=0.5, dead_code_threshold=0.6)
    far = torch.tensor([[100.0, 100.0], [100.0, 100.0], [100.0, 100.0]])
    set_codes(quantizer, torch.tensor([[0.0, 0.0], [200.0, -200.0], [300.0, 0.0], [-300.0, 0.0]]))
    inputs = torch.cat([torch.zeros(5, 2), far])  # everything goes to code 0; the far points are served badly
    quantizer(as_map(inputs))
    weight = quantizer.embedding.weight
    # codes 1-3 were unused (size 0.5 < 0.6): restarted at the badly served points, the only ones with
    # a non-zero distance to their code
    torch.testing.assert_close(weight[1:], far, atol=1e-3, rtol=1e-3)
    out = quantizer.eval()(as_map(inputs))
    assert set(out.ids.flatten().tolist()) == {0, 1}  # the far points now have a code of their own


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="dead_code_threshold > 0 needs ema=True"):
        VectorQuantizer(4, 2, dead_code_threshold=0.5)
    with pytest.raises(ValueError, match="dead_code_threshold must be >= 0"):
        VectorQuantizer(4, 2, ema=True, dead_code_threshold=-1.0)
    with pytest.raises(ValueError, match="input has 3 channels, codes have 2"):
        VectorQuantizer(4, 2)(torch.zeros(1, 3, 2, 2))


def test_with_restarts_the_first_step_initialises_every_code_from_the_data() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 2, ema=True, decay=0.9, dead_code_threshold=0.45)
    inputs = torch.randn(20, 2) * 3
    quantizer(as_map(inputs))
    weight = quantizer.embedding.weight
    # every code is now an input (restarted) or the mean of the inputs it took (used): none is left
    # at its tiny random initialisation
    assert (weight.norm(dim=1) > 0.05).all()
    distances = torch.cdist(weight, inputs).min(dim=1).values
    used = quantizer.cluster_size > 0.46  # 0.1 x count >= 0.5; restarted codes sit at 0.45
    assert used.any() and not used.all()
    assert torch.allclose(distances[~used], torch.zeros(int((~used).sum())), atol=1e-4)


def test_a_restarted_code_nobody_picks_is_restarted_again_at_once() -> None:
    quantizer = VectorQuantizer(2, 2, ema=True, decay=0.9, dead_code_threshold=1.0)
    set_codes(quantizer, torch.tensor([[0.0, 0.0], [50.0, 50.0]]))
    quantizer.cluster_size.fill_(5.0)
    quantizer.embed_avg.copy_(quantizer.embedding.weight * 5.0)
    quantizer(as_map(torch.tensor([[0.0, 0.0], [0.0, 0.1], [3.0, 3.0]])))
    # code 1 went unused (5 * 0.9 = 4.5 >= 1: alive); decay it below the threshold
    quantizer.cluster_size[1] = 0.5
    quantizer(as_map(torch.tensor([[0.0, 0.0], [0.0, 0.1], [3.0, 3.0]])))
    torch.testing.assert_close(quantizer.embedding.weight[1], torch.tensor([3.0, 3.0]), atol=1e-3, rtol=1e-3)
    assert quantizer.cluster_size[1].item() == pytest.approx(1.0)  # restarted exactly at the threshold
    quantizer(as_map(torch.tensor([[0.0, 0.0], [0.1, 0.0], [-4.0, 4.0]])))
    # nobody picked it: dead again, restarted at the new worst-served input
    torch.testing.assert_close(quantizer.embedding.weight[1], torch.tensor([-4.0, 4.0]), atol=1e-3, rtol=1e-3)
