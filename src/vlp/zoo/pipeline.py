"""From a zoo name to converted weights: fetch (verified), read (safely), convert, check what was dropped.

The one path every use of a registry entry takes: ``python -m vlp zoo convert``, ``vlp.zoo.load`` and
``init_from: zoo:<family>:<tag>`` in a recipe.
"""

from __future__ import annotations

from pathlib import Path

from vlp.zoo.convert import converter
from vlp.zoo.converted import Converted, check_expected
from vlp.zoo.registry import Entry, get_entry

ZOO_PREFIX = "zoo:"


def is_zoo_name(value: str) -> bool:
    """``value`` names a zoo entry (``zoo:family:tag``) rather than a file."""
    return value.startswith(ZOO_PREFIX)


def entry_of(value: str) -> Entry:
    """The entry ``zoo:family:tag`` (or ``family:tag``) names; an unknown name fails, naming near ones."""
    return get_entry(value[len(ZOO_PREFIX) :] if is_zoo_name(value) else value)


def convert_file(entry: Entry, path: Path) -> Converted:
    """Read ``path`` as ``entry``'s file, convert it and check the dropped keys against the entry."""
    from vlp.zoo.fetch import read_entry_state

    state = read_entry_state(entry, path)
    converted = converter(entry.converter)(state, f"{entry.name} ({path})")
    check_expected(converted.report, entry.expected_dropped, entry.name)
    return converted


def convert_entry(entry: Entry, offline: bool | None = None, progress: bool = True) -> Converted:
    """Fetch ``entry``'s file (verified against its sha256), then :func:`convert_file`."""
    from vlp.zoo.fetch import fetch

    return convert_file(entry, fetch(entry, offline=offline, progress=progress))
