"""A converter's records written as webdataset shards: ``write_shards``.

Output layout::

    out/<split>/shard-000000.tar       webdataset samples: <key>.jpg (or .png, .webp, left.jpg ...) + <key>.json
    out/vocab.json                     the converter's lists (categories, answers, ...) when it has any
    out/manifest.json                  what was written and what was dropped, with why (manifest module)
    out/.vlp-convert.json              the conversion's settings: resuming and refusing (manifest module)
    out/.vlp-convert/<split>/*.json    one record per finished shard: its samples and dropped keys

Shard ``i`` of a split holds the split's records ``i * samples_per_shard`` to ``(i + 1) * samples_per_shard
- 1`` minus those dropped, so the shards are a function of the records and the settings alone: the same
for any number of workers and for a conversion that was interrupted and resumed. (A shard whose records
were all dropped is not written: its number is skipped.) The tar files are written with a fixed mtime,
user and mode, so one conversion always yields the same bytes.

Images are read and fully decoded in worker processes (:mod:`vlp.datamodules.convert.images`); a
missing or corrupt image drops its record, and the manifest lists it with the reason.

Resuming: a shard is written under ``shard-NNNNNN.tar.partial`` and renamed once complete, after its
record in ``.vlp-convert/``. A run given a folder holding a conversion with the same settings skips the
complete shards and writes the others; with other settings, or given a folder of other files, it stops
before writing anything, naming the differences. Nothing outside the conversion's own files is ever
written or deleted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import webdataset as wds
from tqdm import tqdm

import vlp
from vlp.datamodules.convert.base import DatasetConverter, Record
from vlp.datamodules.convert.images import Prepared, prepare_batch
from vlp.datamodules.convert.manifest import (
    STAMP_FILE,
    STAMP_FORMAT,
    Manifest,
    SplitManifest,
    differences,
    write_json,
)
from vlp.processes import worker_context

__all__ = ["OutFolderError", "write_shards"]

log = logging.getLogger(__name__)

STATE_DIR = ".vlp-convert"
VOCAB_FILE = "vocab.json"
TASK_RECORDS = 8
"""Records per task sent to a worker process."""
TASKS_PER_WORKER = 4
"""Tasks in flight per worker: enough to keep the workers busy, few enough to bound memory."""

Tasks = Iterable[tuple[int, list[Record]]]
Runner = Callable[[Tasks], Iterator[tuple[int, list[Prepared]]]]


class OutFolderError(FileExistsError):
    """The output folder is not one this conversion may write into; nothing was written."""


def write_shards(
    converter: DatasetConverter,
    out: str | Path,
    *,
    workers: int = 4,
    max_side: int | None = None,
    samples_per_shard: int = 1000,
    progress: bool = True,
) -> Manifest:
    """Write every split of ``converter`` as shards into ``out`` and return the manifest (see the module).

    Args:
        converter: the dataset's converter; its input files are checked before anything is written.
        out: a new or empty folder, or one holding this conversion (same settings), which is resumed.
        workers: processes reading and checking images; ``1`` reads them in this process.
        max_side: shrink images whose longer side is larger to this size (re-encoded in their format,
            boxes scaled); ``None`` stores every image's bytes as they are.
        samples_per_shard: records per shard (fewer when some are dropped).
        progress: show a progress bar per split.
    """
    _check_arguments(workers, max_side, samples_per_shard)
    converter.check()
    splits = converter.splits()
    for split in splits:
        if not split or "/" in split or split.startswith(".") or split == STATE_DIR:
            raise ValueError(f"{converter.name}: split name {split!r} cannot be a folder name")
    target = Path(out).expanduser().absolute()
    settings = conversion_settings(converter, max_side, samples_per_shard)
    claim_folder(target, settings)
    counts: dict[str, int] = {}
    with task_runner(workers, max_side) as run:
        for split in splits:
            counts[split] = write_split(converter, split, target, run, samples_per_shard, progress)
    vocab = converter.vocab()
    if vocab is not None:
        write_json(target / VOCAB_FILE, vocab)
    manifest = collect_manifest(converter, target, settings, counts, vocab is not None)
    manifest.write(target)
    write_json(target / STAMP_FILE, {**_stamp(settings), "complete": True})
    return manifest


def _check_arguments(workers: int, max_side: int | None, samples_per_shard: int) -> None:
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels or None, got {max_side}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")


# ------------------------------------------------------------------------------------------ the folder


def conversion_settings(converter: DatasetConverter, max_side: int | None, samples_per_shard: int) -> dict:
    """The settings a folder's stamp holds: converter, its options, the writer's options and the sha256 of
    each annotation file (named relative to the converter's root when inside it)."""
    options = json.loads(json.dumps(getattr(converter, "options", {}), default=str))
    return {
        "converter": converter.name,
        "options": options,
        "max_side": max_side,
        "samples_per_shard": samples_per_shard,
        "annotation_files": {
            _shown_path(path, converter.root): sha256(path) for path in converter.annotation_files()
        },
    }


def _shown_path(path: Path, root: Path) -> str:
    path = Path(path)
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(settings: dict[str, Any]) -> dict[str, Any]:
    return {"format": STAMP_FORMAT, "vlp_version": vlp.__version__, **settings}


def claim_folder(out: Path, settings: dict[str, Any]) -> None:
    """Make ``out`` this conversion's folder: create it (new or empty) or check its stamp (a conversion
    with the same settings, resumed); :class:`OutFolderError` naming why not, before anything is written."""
    stamp_path = out / STAMP_FILE
    if out.exists() and not out.is_dir():
        raise OutFolderError(f"--out {out} is a file: give a new or empty folder")
    if stamp_path.is_file():
        try:
            found = json.loads(stamp_path.read_text(encoding="utf-8"))
        except ValueError as exn:
            raise OutFolderError(f"{stamp_path} is not readable json ({exn}): give a new --out") from None
        changed = differences(found, settings)
        if not changed:
            log.info("vlp: %s holds this conversion: complete shards are kept, the others written", out)
            return
        if found.get("complete") or any((out / STATE_DIR).glob("*/shard-*.json")):
            raise OutFolderError(
                f"--out {out} holds a {found.get('converter')} conversion with other settings: "
                f"{'; '.join(changed)}. Re-run with that folder's settings to finish it, or give a new --out"
            )
        # A conversion that stopped before its first shard (a bad annotation file, say): nothing to keep.
        log.info("vlp: %s holds a conversion stopped before its first shard: starting it again", out)
    elif out.is_dir() and any(out.iterdir()):
        raise OutFolderError(
            f"--out {out} is not empty and holds no vlp conversion ({STAMP_FILE}); vlp writes only into a "
            "new or empty folder, or one a conversion with the same settings started: give a new --out"
        )
    else:
        out.mkdir(parents=True, exist_ok=True)
    write_json(stamp_path, {**_stamp(settings), "complete": False})


# ------------------------------------------------------------------------------------------ the workers


@contextmanager
def task_runner(workers: int, max_side: int | None) -> Iterator[Runner]:
    """A function preparing tasks of records in order: in this process (``workers=1``) or in a pool of
    processes with a bounded number of tasks in flight."""
    if workers == 1:
        yield lambda tasks: ((index, prepare_batch(records, max_side)) for index, records in tasks)
        return
    # the process's fork server: workers start from a clean process rather than a fork of this one
    executor = ProcessPoolExecutor(workers, mp_context=worker_context())

    def submit(records: list[Record]) -> Future[list[Prepared]]:
        return executor.submit(prepare_batch, records, max_side)

    try:
        yield lambda tasks: ordered_results(submit, tasks, workers * TASKS_PER_WORKER)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def ordered_results(
    submit: Callable[[list[Record]], Future[list[Prepared]]], tasks: Tasks, window: int
) -> Iterator[tuple[int, list[Prepared]]]:
    """Each task's results in the order of the tasks, at most ``window`` tasks submitted ahead."""
    pending: deque[tuple[int, Future[list[Prepared]]]] = deque()
    try:
        for index, records in tasks:
            pending.append((index, submit(records)))
            if len(pending) >= window:
                shard, future = pending.popleft()
                yield shard, future.result()
        while pending:
            shard, future = pending.popleft()
            yield shard, future.result()
    finally:
        for _, future in pending:
            future.cancel()


# ------------------------------------------------------------------------------------------ the shards


class ShardSink:
    """Shard ``index`` of a split being written: its tar under a ``.partial`` name, opened at its first
    sample, and the tally of its records."""

    def __init__(self, shards_dir: Path, state_dir: Path, index: int) -> None:
        self.index = index
        self.name = f"shard-{index:06d}.tar"
        self.path = shards_dir / self.name
        self.partial = shards_dir / f"{self.name}.partial"
        self.state = state_dir / f"shard-{index:06d}.json"
        self.records = 0
        self.samples = 0
        self.dropped: list[dict[str, str]] = []
        self.fixed: Counter[str] = Counter()
        self.reencoded: Counter[str] = Counter()
        self._stream: BinaryIO | None = None
        self._tar: wds.TarWriter | None = None

    def add(self, prepared: Prepared) -> None:
        self.records += 1
        if prepared.sample is None:
            self.dropped.append({"key": prepared.key, "reason": prepared.reason})
            return
        if self._tar is None:
            self._stream = self.partial.open("wb")
            self._tar = wds.TarWriter(self._stream, mtime=0, encoder=False)
        self._tar.write(prepared.sample)
        self.samples += 1
        self.fixed.update(prepared.fixed)
        self.reencoded.update(prepared.reencoded)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def abandon(self) -> None:
        """Close and remove the unfinished shard (a later run writes it again)."""
        self.close()
        self.partial.unlink(missing_ok=True)

    def summary(self) -> dict[str, Any]:
        return {
            "shard": self.name if self.samples else None,
            "records": self.records,
            "samples": self.samples,
            "dropped": self.dropped,
            "extensions_fixed": dict(sorted(self.fixed.items())),
            "reencoded": dict(sorted(self.reencoded.items())),
        }


def commit_shard(sink: ShardSink) -> None:
    """Finish a shard: its record in the state folder, then the tar renamed to its final name (a shard is
    complete when both exist)."""
    sink.close()
    write_json(sink.state, sink.summary())
    if sink.samples:
        os.replace(sink.partial, sink.path)


def finished_shards(shards_dir: Path, state_dir: Path) -> dict[int, dict[str, Any]]:
    """Index -> record of the split's complete shards (record written, tar in place)."""
    finished = {}
    for state in sorted(state_dir.glob("shard-*.json")):
        try:
            summary = json.loads(state.read_text(encoding="utf-8"))
        except ValueError:
            continue  # cut off by a kill: the shard is written again
        shard = summary.get("shard")
        if shard is None or (shards_dir / shard).is_file():
            finished[int(state.stem.removeprefix("shard-"))] = summary
    return finished


def write_split(
    converter: DatasetConverter, split: str, out: Path, run: Runner, samples_per_shard: int, progress: bool
) -> int:
    """Write the split's unfinished shards; return its number of shards (written or not)."""
    shards_dir, state_dir = out / split, out / STATE_DIR / split
    shards_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    finished = finished_shards(shards_dir, state_dir)
    bar = tqdm(
        total=converter.size(split),
        desc=f"{converter.name} {split}",
        unit=" samples",
        disable=not progress,
        dynamic_ncols=True,
    )
    chunks: list[int] = [0]  # the number of shards, counted while the records are read
    results = run(_tasks(converter, split, finished, samples_per_shard, bar, chunks))
    sink: ShardSink | None = None
    try:
        for index, prepared in results:
            if sink is None or sink.index != index:
                if sink is not None:
                    commit_shard(sink)
                sink = ShardSink(shards_dir, state_dir, index)
            for result in prepared:
                sink.add(result)
            bar.update(len(prepared))
        if sink is not None:
            commit_shard(sink)
            sink = None
    finally:
        if sink is not None:
            sink.abandon()
        close = getattr(results, "close", None)
        if close is not None:
            close()  # cancels the tasks not yet started
        bar.close()
    return chunks[0]


def _tasks(
    converter: DatasetConverter,
    split: str,
    finished: dict[int, dict[str, Any]],
    samples_per_shard: int,
    bar: tqdm,
    chunks: list[int],
) -> Iterator[tuple[int, list[Record]]]:
    """``(shard index, records)`` tasks of the unfinished shards; keys are checked for every record."""
    records = iter(converter.records(split))
    seen: set[str] = set()
    for index in itertools.count():
        chunk = list(itertools.islice(records, samples_per_shard))
        if not chunk:
            return
        chunks[0] = index + 1
        for record in chunk:
            _check_key(converter, split, record.key, seen)
        if index in finished:
            bar.update(len(chunk))
            continue
        for start in range(0, len(chunk), TASK_RECORDS):
            yield index, chunk[start : start + TASK_RECORDS]


def _check_key(converter: DatasetConverter, split: str, key: Any, seen: set[str]) -> None:
    if not isinstance(key, str) or not key or "." in key or "/" in key:
        raise ValueError(
            f"{converter.name} split {split}: record key {key!r} is not a webdataset key "
            "(a non-empty string without dots or slashes)"
        )
    if key in seen:
        raise ValueError(f"{converter.name} split {split}: record key {key!r} occurs twice")
    seen.add(key)


# ------------------------------------------------------------------------------------------ the manifest


def collect_manifest(
    converter: DatasetConverter, out: Path, settings: dict[str, Any], counts: dict[str, int], vocab: bool
) -> Manifest:
    """The manifest from the records of every shard (those of this run and of an interrupted one)."""
    splits: dict[str, SplitManifest] = {}
    dropped: list[dict[str, str]] = []
    for split, count in counts.items():
        info = SplitManifest()
        fixed: Counter[str] = Counter()
        reencoded: Counter[str] = Counter()
        for index in range(count):
            state = out / STATE_DIR / split / f"shard-{index:06d}.json"
            summary = json.loads(state.read_text(encoding="utf-8"))
            info.samples += summary["samples"]
            info.shards += summary["shard"] is not None
            info.dropped += len(summary["dropped"])
            dropped += [{"split": split, **entry} for entry in summary["dropped"]]
            fixed.update(summary["extensions_fixed"])
            reencoded.update(summary["reencoded"])
        info.extensions_fixed = dict(sorted(fixed.items()))
        info.reencoded = dict(sorted(reencoded.items()))
        splits[split] = info
    return Manifest(
        converter=settings["converter"],
        vlp_version=vlp.__version__,
        options=settings["options"],
        max_side=settings["max_side"],
        samples_per_shard=settings["samples_per_shard"],
        annotation_files=settings["annotation_files"],
        splits=splits,
        dropped=dropped,
        dropped_annotations=[{"key": str(key), "reason": reason} for key, reason in converter.dropped()],
        vocab=VOCAB_FILE if vocab else None,
    )
