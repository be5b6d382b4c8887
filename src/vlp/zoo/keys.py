"""Key-by-key mapping between two state-dict layouts, with nothing dropped or invented silently.

A layout is described once as a list of :class:`Link` s (our key ↔ their key or keys) and used in
both directions. Importing consumes every source key or names the ones left over; exporting fills
every target key from ours or names the ones we cannot represent. A projection that one code base
fuses and the other keeps separate (q, k, v ↔ qkv) is one link with several keys on their side,
concatenated along the output dimension (dim 0 of a ``Linear`` weight or bias).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


class KeyMappingError(KeyError):
    """A state dict has keys a converter cannot map, or lacks keys it needs; the message names them."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Link:
    """Our key ``ours`` holds their key(s) ``theirs``, concatenated along dim 0 when there are several.

    ``optional`` links may be absent as a whole (a ``Linear`` without bias); half-present is an error.
    """

    ours: str
    theirs: tuple[str, ...]
    optional: bool = False


def _listing(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _refuse(keys: Iterable[str], problem: str) -> None:
    """Raise ``problem`` followed by the listing of ``keys``, when there are any."""
    keys = list(keys)
    if keys:
        raise KeyMappingError(f"{problem} {_listing(keys)}")


def import_state(
    state: Mapping[str, Tensor],
    links: Iterable[Link],
    source: str,
    unused: Iterable[str] = (),
) -> dict[str, Tensor]:
    """Their state dict → ours. Every key of ``state`` must be consumed by a link or be in ``unused``.

    Raises:
        KeyMappingError: naming the keys of ``state`` no link consumes, or the keys a link needs and
            ``state`` lacks.
    """
    out: dict[str, Tensor] = {}
    consumed = set(unused) & set(state)
    missing: list[str] = []
    for link in links:
        present = [key for key in link.theirs if key in state]
        if link.optional and not present:
            continue
        absent = [key for key in link.theirs if key not in state]
        if absent:
            missing += absent
            continue
        parts = [state[key] for key in link.theirs]
        out[link.ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        consumed.update(link.theirs)
    _refuse(missing, f"{source}: missing keys")
    _refuse(set(state) - consumed, f"{source}: unmapped keys")
    return out


def export_state(state: Mapping[str, Tensor], links: Iterable[Link], target: str) -> dict[str, Tensor]:
    """Our state dict → theirs. Every key of ``state`` must be used and every link filled.

    Raises:
        KeyMappingError: naming our keys the target layout has no place for, or the keys a link
            needs that ``state`` lacks.
    """
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for link in links:
        if link.ours not in state:
            if not link.optional:
                missing.append(link.ours)
            continue
        tensor = state[link.ours]
        used.add(link.ours)
        if len(link.theirs) == 1:
            out[link.theirs[0]] = tensor
            continue
        if tensor.shape[0] % len(link.theirs):
            raise ValueError(
                f"{link.ours}: dim 0 of {tuple(tensor.shape)} does not split into {len(link.theirs)} equal parts"
            )
        for key, part in zip(link.theirs, tensor.chunk(len(link.theirs), dim=0)):
            out[key] = part.clone()
    _refuse(missing, f"{target}: cannot fill from missing keys")
    _refuse(set(state) - used, f"{target}: has no place for keys")
    return out
