"""Samples of one webdataset tar shard, read so that counting and reading always agree.

A sample is the run of consecutive tar members that share a key (the name up to its first dot, as
webdataset groups them): ``{"__key__": key, "__url__": shard, "<extension>": bytes, ...}``, extensions
lower-cased, webdataset's ``__*__`` metadata members ignored. vlp reads tars itself rather than through
webdataset's reader because several ranks must agree, before reading, on how many samples each shard
holds (:func:`shard_sample_count`, from the headers only), and that count must equal what the reader
yields for every kind of damage, or a rank would run out of batches and the others wait for it forever:

* a repeated extension within a key starts a new sample, and a key seen earlier in the shard marks its
  sample ``__skip__`` (a duplicate; the first sample with the key is the one used);
* a truncated shard yields its samples up to the cut; the sample the cut falls in is marked ``__skip__``;
* a file that is not a tar, or an empty shard, yields nothing.

Every such case is logged naming the shard. A sample marked ``__skip__`` holds the reason; the decoder
turns it into a counted, logged skip. Local files are read with random access (headers first, so a cut
is seen before its data is read); other URLs (``pipe:``, ``http:`` ...) are streamed through
webdataset's ``gopen``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

log = logging.getLogger(__name__)

SKIP = "__skip__"
"""Key of a raw sample that must not be used; its value is the reason."""

_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (``__key__`` ...), never sample files


def _tar_mode(url: str) -> str:
    if url.endswith(".tar"):
        return "r:"
    if url.endswith((".tar.gz", ".tgz")):
        return "r:gz"
    return "r:*"


def _members(
    url: str, tar: tarfile.TarFile, size: int | None, quiet: bool
) -> Iterator[tuple[tarfile.TarInfo, bool]]:
    """``(member, cut)`` for the regular sample members of ``tar`` in order, up to the first damage
    (logged unless ``quiet``). ``cut`` is True for the last one yielded when its data is cut off.

    ``size`` is the file size of an uncompressed local shard: a member whose data would end past it, or a
    header that does not fit, is a cut, found from the headers alone.
    """
    members = iter(tar)
    count = 0
    while True:
        try:
            member = next(members)
        except StopIteration:
            if size is not None and size - tar.offset < tarfile.BLOCKSIZE:
                _warn(
                    quiet,
                    "vlp: shard %s is truncated after %d file(s); the samples before the cut are read",
                    url,
                    count,
                )
            elif count == 0:
                _warn(quiet, "vlp: shard %s holds no samples", url)
            return
        except Exception as exn:  # tarfile signals damage with ReadError, EOFError, OSError, zlib errors ...
            _warn(
                quiet,
                "vlp: shard %s is damaged after %d file(s) (%s: %s); the samples before it are read",
                url,
                count,
                type(exn).__name__,
                exn,
            )
            return
        tar.members = []  # keep no index: a shard is read once, in order
        if not member.isreg() or _META.match(member.name):
            continue
        if size is not None and member.offset_data + member.size > size:
            _warn(
                quiet,
                "vlp: shard %s is truncated in %s; the samples before the cut are read",
                url,
                member.name,
            )
            yield member, True
            return
        count += 1
        yield member, False


def _warn(quiet: bool, message: str, *args: Any) -> None:
    if not quiet:
        log.warning(message, *args)


def read_shard(url: str, with_data: bool = True, quiet: bool = False) -> Iterator[dict[str, Any]]:
    """The samples of shard ``url`` (see the module docstring). Without ``with_data`` every file's value
    is ``None`` (what :func:`shard_sample_count` counts). Problems are logged naming the shard unless
    ``quiet``; nothing is raised for a damaged or unreadable shard."""
    with contextlib.ExitStack() as stack:
        try:
            if Path(url).is_file():
                tar = stack.enter_context(tarfile.open(url, _tar_mode(url)))
                size = Path(url).stat().st_size if url.endswith(".tar") else None
            else:
                stream = stack.enter_context(gopen(url, "rb"))
                tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|*"))
                size = None
        except Exception as exn:
            _warn(
                quiet,
                "vlp: cannot read shard %s: %s: %s; going on with the next shard",
                url,
                type(exn).__name__,
                exn,
            )
            return
        yield from _samples(url, tar, _members(url, tar, size, quiet), with_data)


def _samples(
    url: str, tar: tarfile.TarFile, members: Iterator[tuple[tarfile.TarInfo, bool]], with_data: bool
) -> Iterator[dict[str, Any]]:
    current: dict[str, Any] | None = None
    seen: set[str] = set()
    for member, cut in members:
        key, extension = base_plus_ext(member.name)
        if key is None:
            continue  # a name without an extension is no sample file (webdataset ignores it too)
        if cut:
            if current is None or key != current["__key__"]:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            current[SKIP] = f"cut off by the end of truncated shard {url} (in {member.name})"
            break
        extension = extension.lower()
        if current is None or key != current["__key__"] or extension in current:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": url}
            if key in seen:
                current[SKIP] = f"duplicate key in shard {url} (the first sample with this key is used)"
            seen.add(key)
        current[extension] = _read(tar, member, current) if with_data else None
    if current is not None:
        yield current


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, sample: dict[str, Any]) -> bytes | None:
    """The member's bytes; a read error marks the sample skipped instead of raising."""
    try:
        stream = tar.extractfile(member)
        if stream is None:
            raise OSError("no data")
        return stream.read()
    except Exception as exn:
        sample[SKIP] = f"cannot read {member.name}: {type(exn).__name__}: {exn}"
        return None


def shard_sample_count(url: str) -> int:
    """Number of samples :func:`read_shard` yields for the local shard ``url``, read from its headers."""
    return sum(1 for _ in read_shard(url, with_data=False, quiet=True))
