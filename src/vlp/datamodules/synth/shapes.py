"""The embedded "shapes" dataset: seeded scenes of coloured shapes with captions, boxes, QA and pair statements.

Every caption, answer and pair label is derived from the scene description rather than sampled on its own,
so all text is true of its image by construction. A split is generated sequentially from one
``np.random.Generator`` seeded by a child of ``SeedSequence(config.seed)`` (one child per split, so splits
never share a random stream), and shards are written with a fixed mtime, so one config always yields
byte-identical shards.

Output layout (ordinary webdataset shards, read by the same code path as any other dataset)::

    out/{train,val,test}/shard-000000.tar            png + json {"captions", "objects", "qa"}
    out/pairs_{train,val,test}/shard-000000.tar      left.png + right.png + json {"statement", "label", ...}
    out/vocab.json                                   categories, attributes, answers, ...
    out/stats.json                                   samples and shards per split, generator config
    out/.vlp-shapes.json                             the generator's stamp: format version, config, complete

The generator only ever writes into a folder it owns (:func:`write_shapes`): a new or empty folder, or one
carrying its stamp. A folder with anything else in it is never written to or deleted, and a stamped
folder written with other settings is reported, setting by setting, rather than reused or replaced.

The generator's parts live beside this module: :mod:`~vlp.datamodules.synth.scenes` (vocabulary, config,
scene sampling), :mod:`~vlp.datamodules.synth.glyphs` and :mod:`~vlp.datamodules.synth.render` (pixels),
:mod:`~vlp.datamodules.synth.text` (captions, QA), :mod:`~vlp.datamodules.synth.statements` (pair
statements) and :mod:`~vlp.datamodules.synth.folder` (stamp and folder ownership). This module writes the
shards and re-exports the public names of all of them.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from vlp.datamodules.synth.folder import (
    _clear_incomplete,
    _folder_error,
    _remove_dead_staging,
    _staging_prefix,
    _write_json,
    _write_stamp,
    shapes_folder_state,
)
from vlp.datamodules.synth.render import render_scene
from vlp.datamodules.synth.scenes import (
    COLOUR_NAMES,
    DEFAULT_CONFIG,
    IMAGE_SPLITS,
    PAIR_SPLITS,
    SHAPES,
    SIZES,
    STYLES,
    Scene,
    ShapesConfig,
    sample_scene,
)
from vlp.datamodules.synth.statements import pair_statement
from vlp.datamodules.synth.text import captions_for, questions_for

__all__ = ["scene_record", "vocabulary", "write_shapes"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ shards


def scene_record(scene: Scene, rng: np.random.Generator, resolution: int) -> dict[str, Any]:
    """The json of a sample: captions, objects (pixel ``bbox``, ``category``, ``attributes``) and QA."""
    return {
        "captions": captions_for(scene, rng, resolution),
        "objects": [obj.to_json() for obj in scene.objects],
        "qa": questions_for(scene, rng, resolution),
    }


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Level 1 encodes twice as fast as the default 6 and, on these flat images, compresses about as well.
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True).encode("utf-8")


def _example(rng: np.random.Generator, config: ShapesConfig) -> tuple[Scene, bytes, dict[str, Any]]:
    scene = sample_scene(rng, config.resolution, textured_prob=config.textured_background_prob)
    png = _png_bytes(render_scene(scene, config.resolution, rng))
    return scene, png, scene_record(scene, rng, config.resolution)


def _answers(record: dict[str, Any]) -> set[str]:
    return {answer for qa in record["qa"] for answer in qa["answers"]}


def _image_samples(
    split: str, count: int, rng: np.random.Generator, config: ShapesConfig, answers: set[str]
) -> Iterator[dict[str, Any]]:
    """Single-image samples; QA answers are added to ``answers`` as they are generated."""
    for index in range(count):
        _, png, record = _example(rng, config)
        answers |= _answers(record)
        yield {"__key__": f"{split}-{index:06d}", "png": png, "json": _json_bytes(record)}


def _pair_samples(
    split: str, count: int, rng: np.random.Generator, config: ShapesConfig, answers: set[str]
) -> Iterator[dict[str, Any]]:
    """Pair samples; QA answers of both scenes are added to ``answers`` as they are generated."""
    for index in range(count):
        left, left_png, left_record = _example(rng, config)
        right, right_png, right_record = _example(rng, config)
        statement, label = pair_statement(left, right, rng)
        answers |= _answers(left_record) | _answers(right_record)
        record = {"statement": statement, "label": label, "left": left_record, "right": right_record}
        yield {
            "__key__": f"{split}-{index:06d}",
            "left.png": left_png,
            "right.png": right_png,
            "json": _json_bytes(record),
        }


def _write_shards(directory: Path, samples: Iterator[dict[str, Any]], count: int, per_shard: int) -> int:
    """Write ``count`` samples into ``shard-%06d.tar`` files of ``per_shard`` samples; return the shard count.

    The fixed mtime (and webdataset's fixed user, group and mode) make the tar bytes a function of the
    samples alone.
    """
    directory.mkdir(parents=True)
    shards = 0
    for _ in range(0, count, per_shard):
        path = directory / f"shard-{shards:06d}.tar"
        with path.open("wb") as stream, wds.TarWriter(stream, mtime=0, encoder=False) as sink:
            for sample in itertools.islice(samples, per_shard):
                sink.write(sample)
        shards += 1
    return shards


def vocabulary(answers: Iterable[str]) -> dict[str, list[str]]:
    """The content of ``vocab.json``; ``answers`` are those that occur in the generated QA."""
    return {
        "categories": list(SHAPES),
        "attributes": [*COLOUR_NAMES, *SIZES, *STYLES],
        "answers": sorted(set(answers)),
        "colours": list(COLOUR_NAMES),
        "shapes": list(SHAPES),
        "sizes": list(SIZES),
        "styles": list(STYLES),
    }


def _write_dataset(root: Path, config: ShapesConfig) -> dict[str, Any]:
    sizes = config.split_sizes()
    seeds = np.random.SeedSequence(config.seed).spawn(len(sizes))
    answers: set[str] = set()
    splits: dict[str, dict[str, int]] = {}
    for (split, count), seed in zip(sizes.items(), seeds):
        make_samples = _pair_samples if split in PAIR_SPLITS else _image_samples
        samples = make_samples(split, count, np.random.default_rng(seed), config, answers)
        shards = _write_shards(root / split, samples, count, config.samples_per_shard)
        splits[split] = {"samples": count, "shards": shards}
    stats = {"splits": splits, "config": asdict(config)}
    _write_json(root / "vocab.json", vocabulary(answers))
    _write_json(root / "stats.json", stats)
    return stats


def _read_stats(root: Path) -> dict[str, Any]:
    """A complete folder's ``stats.json``, splits in the order they are generated."""
    stats = json.loads((root / "stats.json").read_text(encoding="utf-8"))
    order = [*IMAGE_SPLITS, *PAIR_SPLITS]
    splits = stats.get("splits", {})
    stats["splits"] = dict(
        sorted(splits.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    )
    return stats


def write_shapes(
    out_dir: str | Path,
    config: ShapesConfig = DEFAULT_CONFIG,
    *,
    root_setting: str = "--out",
    synth_setting: str | None = None,
) -> dict[str, Any]:
    """Make ``out_dir`` hold the shapes dataset of ``config`` and return its stats.

    A complete folder with these settings is reused as it is (nothing is written). A new or empty folder,
    or one holding an interrupted generation (its stamp says incomplete), is generated: everything is
    written into a sibling ``<out_dir>.vlp-tmp-<pid>`` that is renamed into place only once complete and
    stamped, so a crash never leaves a folder that :func:`shapes_ready` accepts. Any other folder raises
    :class:`ShapesFolderError` naming ``root_setting`` (and ``synth_setting``, the setting that turns
    generation off) and, for a shapes folder of other settings, each difference; nothing is deleted.
    """
    target = Path(out_dir).expanduser().resolve()
    state = shapes_folder_state(target)
    if state.kind == "complete" and not state.differences(config):
        log.info("vlp: %s already holds the shapes dataset with these settings; nothing written", target)
        return _read_stats(target)
    if state.kind not in ("absent", "empty", "incomplete"):
        raise _folder_error(target, state, config, root_setting, synth_setting)
    _remove_dead_staging(target)
    staging = target.with_name(f"{_staging_prefix(target)}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        _write_stamp(staging, config, complete=False)
        stats = _write_dataset(staging, config)
        _write_stamp(staging, config, complete=True)
        if state.kind == "incomplete":
            _clear_incomplete(target)
        try:
            staging.rename(target)  # replaces an empty folder
        except OSError:
            now = shapes_folder_state(target)  # another process finished first?
            if now.kind == "complete" and not now.differences(config):
                shutil.rmtree(staging)
                return _read_stats(target)
            raise _folder_error(target, now, config, root_setting, synth_setting) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return stats
