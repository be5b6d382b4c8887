"""What every zoo converter returns: weights in a vlp task's key layout, the model they build, and a report.

A converter is a function ``convert(state, source) -> Converted`` from the publisher's state dict (already
taken out of its container) to vlp. Its keys are those of a vlp task's state dict (``model.*`` for the
assembly, ``objectives.<name>.head.*`` for heads), so ``init_from`` matches them by name as it does a
vlp checkpoint, and :func:`vlp.zoo.load` builds ``model`` from ``model_config`` and loads the
``model.*`` keys strictly.

The report says what happened to every key, as ``init_from``'s report does: loaded unchanged, adapted
(split, merged, interpolated, renamed buffers: how), and dropped (source keys with no place in vlp).
:func:`check_expected` compares the dropped keys with the ones a registry entry expects to drop, so a
checkpoint that differs from the published layout fails instead of loading partially.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from vlp.zoo.keys import KeyMappingError


@dataclass
class ConversionReport:
    """Key by key: ``loaded`` and ``adapted`` are vlp keys, ``dropped`` are source keys."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)  # vlp key -> how it was made
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A block for the terminal: counts of loaded keys by module, adapted and dropped keys by name."""
        lines = loaded_and_adapted_lines(f"vlp zoo: converted {self.source}", self.loaded, self.adapted)
        lines.append(f"  dropped {len(self.dropped):4d} (in the source, no place in vlp)")
        lines += [f"    {key}" for key in sorted(self.dropped)]
        return "\n".join(lines)


def loaded_and_adapted_lines(title: str, loaded: list[str], adapted: dict[str, str]) -> list[str]:
    """The head of a key report (this conversion's, ``init_from``'s): the title, the loaded keys counted by
    module (first two name parts), and every adapted key with how it was made."""
    groups = Counter(".".join(key.split(".")[:2]) for key in loaded)
    lines = [title]
    lines.append(
        f"  loaded  {len(loaded):4d} tensors: "
        + ", ".join(f"{name} ({count})" for name, count in sorted(groups.items()))
    )
    lines.append(f"  adapted {len(adapted):4d}" + ("" if adapted else " (none)"))
    lines += [f"    {key}: {how}" for key, how in sorted(adapted.items())]
    return lines


@dataclass
class Converted:
    """Converted weights.

    Attributes:
        state: vlp task-layout keys (``model.*``, ``objectives.<name>.head.*``) to tensors.
        model_config: ``{"class_path": ..., "init_args": {...}}`` of the ``nn.Module`` the ``model.*`` keys
            load into, with every size read from the weights (jsonargparse's form, as in recipes); ``None``
            when the weights are a part to start a recipe's model from (``init_from``), not a whole model.
        report: what happened to each key.
    """

    state: dict[str, Tensor]
    model_config: dict[str, Any] | None
    report: ConversionReport


def _unmatched(keys: Iterable[str], patterns: Iterable[str]) -> list[str]:
    patterns = list(patterns)
    return sorted(key for key in keys if not any(fnmatch.fnmatchcase(key, p) for p in patterns))


def check_expected(report: ConversionReport, expected_dropped: Iterable[str], entry: str) -> None:
    """Fail unless the dropped keys are exactly those ``expected_dropped`` (fnmatch patterns) describe:
    every dropped key matches a pattern and every pattern matches a dropped key.

    Raises:
        KeyMappingError: naming the unexpected dropped keys and the patterns nothing matched.
    """
    expected = list(expected_dropped)
    surprising = _unmatched(report.dropped, expected)
    unused = [p for p in expected if not any(fnmatch.fnmatchcase(k, p) for k in report.dropped)]
    if surprising or unused:
        parts = []
        if surprising:
            parts.append(f"dropped keys the entry does not expect: {surprising[:20]}")
        if unused:
            parts.append(f"keys the entry expects to drop are not in the file: {unused}")
        raise KeyMappingError(f"{entry} ({report.source}): " + "; ".join(parts))
