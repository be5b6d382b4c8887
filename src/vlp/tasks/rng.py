"""Every random number generator a training step draws from, as checkpointable state.

Dropout, drop-path and ViLT's patch sampling draw from the global torch generator (and RandAugment-style
code from Python's and NumPy's), so an exact resume must restore them: Lightning's checkpoints do not.
States are plain tensors and lists (NumPy's key becomes a tensor), so checkpoints still load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "vlp_rng_states"


def capture_rng_state() -> dict[str, Any]:
    """This process's torch (CPU and every CUDA device), NumPy and Python generator states."""
    numpy_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss"]))


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's state, indexed by rank (a collective: all ranks must call it)."""
    own = capture_rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [own]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, own)
    return states


def restore_rank_rng_state(states: list[dict[str, Any]], rank: int, world_size: int) -> bool:
    """Restore this rank's saved state; with another world size nothing matches, so nothing is restored."""
    if len(states) != world_size:
        log.warning(
            "vlp: the checkpoint holds RNG states of %d process(es), this run has %d: RNG states are not "
            "restored, so dropout and patch sampling will not repeat the interrupted run's",
            len(states),
            world_size,
        )
        return False
    restore_rng_state(states[rank])
    return True
