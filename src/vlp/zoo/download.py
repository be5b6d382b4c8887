"""One URL (``http(s)://`` or ``file://``) into a ``.part`` file, resumed where an earlier attempt stopped.

A ``.part`` file left by an interrupted download is continued with an HTTP Range request; a server that
ignores Range (it answers 200 with the whole file) or no longer has those bytes (416) gets a fresh
download. The caller checks the hash and moves the file into place (:func:`vlp.zoo.fetch.fetch`).
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

CHUNK = 1 << 20
TIMEOUT = 60.0  # seconds without a byte from the server before the download fails
USER_AGENT = "vlp-zoo (urllib)"


def _range_start(content_range: str | None) -> int | None:
    """The first byte of ``Content-Range: bytes <start>-<end>/<size>``."""
    match = re.match(r"bytes (\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def download(url: str, part: Path, *, progress: bool = True) -> Path:
    """Download ``url`` into ``part`` and return it; bytes already in ``part`` are kept and the rest asked
    for with ``Range: bytes=<size>-`` when the URL is HTTP(S) and the server answers 206.

    Raises:
        urllib.error.URLError, OSError, http.client.HTTPException: the download failed; what arrived stays
            in ``part`` for the next attempt to resume.
    """
    offset = part.stat().st_size if part.is_file() else 0
    ranged = offset > 0 and url.startswith(("http://", "https://"))
    headers = {"User-Agent": USER_AGENT}
    if ranged:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as error:
        if not (ranged and error.code == 416):  # 416: the partial file is longer than the remote one
            raise
        part.unlink()
        return download(url, part, progress=progress)
    with response:
        resumed = ranged and response.status == 206
        if resumed and _range_start(response.headers.get("Content-Range")) != offset:
            raise OSError(
                f"{url}: asked for bytes from {offset}, the server sent {response.headers.get('Content-Range')}"
            )
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with (
            part.open("ab" if resumed else "wb") as out,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise OSError(f"{url}: the connection ended after {size} of {total} bytes; run again to resume")
    return part
