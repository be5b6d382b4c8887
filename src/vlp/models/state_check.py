"""One strict comparison of a module's state dict with weights to load, shared by the loaders that must
name every key that does not fit (``load_state_dict``'s own error stops at the first shape mismatch)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def check_state_matches(own: Mapping[str, Tensor], given: Mapping[str, Tensor], what: str) -> None:
    """Raise a ``KeyError`` naming ``what`` and every missing, unexpected or mis-shaped key of ``given``
    against ``own``; return quietly when every key and shape matches."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [
        f"{key}: {tuple(given[key].shape)} given vs {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(given))
        if given[key].shape != own[key].shape
    ]
    if missing or unexpected or shapes:
        raise KeyError(
            f"{what} do not match: missing {missing}, unexpected {unexpected}, shape mismatches {shapes}"
        )
