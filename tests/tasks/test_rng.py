"""RNG states survive a checkpoint round trip and put every generator back where it was."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from vlp.tasks.rng import capture_rng_state, restore_rank_rng_state, restore_rng_state


def draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_restored_state_repeats_the_draws_after_a_weights_only_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    path = tmp_path / "rng.pt"
    torch.save(capture_rng_state(), path)
    first = draws()
    assert draws() != first
    restore_rng_state(torch.load(path, weights_only=True))
    assert draws() == first


def test_a_different_world_size_restores_nothing() -> None:
    torch.manual_seed(5)
    saved = [capture_rng_state(), capture_rng_state()]
    torch.manual_seed(6)
    expected = torch.rand(2)
    torch.manual_seed(6)
    assert not restore_rank_rng_state(saved, rank=0, world_size=1)
    torch.testing.assert_close(torch.rand(2), expected)
