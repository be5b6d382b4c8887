"""The shapes generator: determinism, geometry, rendering, and the truth of every caption, answer and label.

The checkers below re-derive the meaning of each caption, question and pair statement from its words and the
object records alone (boxes, categories, attributes), without the generator's description machinery.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import socket
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from vlp.datamodules.synth import folder, glyphs, scenes, shapes
from vlp.datamodules.synth.folder import ShapesFolderError, shapes_ready
from vlp.datamodules.synth.render import render_scene
from vlp.datamodules.synth.scenes import ShapesConfig, sample_scene
from vlp.datamodules.synth.shapes import scene_record, write_shapes
from vlp.datamodules.synth.statements import pair_statement
from vlp.datamodules.synth.text import captions_for, questions_for

COLOUR_RGB = {
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 245),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 220),
    "orange": (255, 135, 0),
    "cyan": (0, 220, 230),
    "white": (245, 245, 245),
}
SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
SIZE_NAMES = ("small", "large")
STYLE_NAMES = ("filled", "outlined")
WORD_SLOTS = (("size", SIZE_NAMES), ("colour", tuple(COLOUR_RGB)), ("style", STYLE_NAMES))
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
RELATION_WORDS = {
    "left of": "left",
    "to the left of": "left",
    "right of": "right",
    "to the right of": "right",
    "above": "above",
    "below": "below",
}
BACKGROUND_MAX = 80  # no background channel may exceed this; every shape colour has a channel above 200

SMALL_CONFIG = ShapesConfig(
    resolution=64,
    train_samples=40,
    val_samples=8,
    test_samples=8,
    pair_train_samples=20,
    pair_val_samples=4,
    pair_test_samples=4,
    samples_per_shard=16,
    seed=3,
)

Obj = dict[str, Any]


# ------------------------------------------------------------------------------------- independent checkers


def colour(obj: Obj) -> str:
    return obj["attributes"][0]


def centre(obj: Obj) -> tuple[float, float]:
    x, y, w, h = obj["bbox"]
    return (x + w / 2, y + h / 2)


def parse_mention(text: str) -> dict[str, str]:
    """``"a small red circle"`` -> ``{"size": "small", "colour": "red", "shape": "circle"}``."""
    article, *modifiers, noun = text.split()
    assert article in ("a", "an", "the"), text
    if article != "the":
        assert (article == "an") == (text.split()[1][0] in "aeiou"), f"wrong article: {text!r}"
    mention: dict[str, str] = {}
    last = -1
    for word in modifiers:
        index = next(i for i, (_, values) in enumerate(WORD_SLOTS) if word in values)
        assert index > last, f"modifier out of order in {text!r}"
        mention[WORD_SLOTS[index][0]] = word
        last = index
    if noun not in ("shape", "object"):
        assert noun in SHAPE_NAMES, text
        mention["shape"] = noun
    return mention


def matches(mention: dict[str, str], obj: Obj) -> bool:
    values = {"shape": obj["category"], "colour": obj["attributes"][0]}
    values |= {"size": obj["attributes"][1], "style": obj["attributes"][2]}
    return all(values[slot] == value for slot, value in mention.items())


def referent(text: str, objects: list[Obj]) -> Obj:
    """The one object a mention names; fails unless exactly one object fits it."""
    mention = parse_mention(text)
    found = [obj for obj in objects if matches(mention, obj)]
    assert len(found) == 1, f"{text!r} names {len(found)} objects"
    return found[0]


def clearly(subject: Obj, anchor: Obj, direction: str, resolution: int) -> bool:
    """Boxes apart along the direction, centres clearly apart along it and not further apart across it."""
    sx, sy, sw, sh = subject["bbox"]
    ax, ay, aw, ah = anchor["bbox"]
    (scx, scy), (acx, acy) = centre(subject), centre(anchor)
    if direction == "left":
        apart, along, across = sx + sw <= ax, acx - scx, abs(acy - scy)
    elif direction == "right":
        apart, along, across = ax + aw <= sx, scx - acx, abs(acy - scy)
    elif direction == "above":
        apart, along, across = sy + sh <= ay, acy - scy, abs(acx - scx)
    else:
        apart, along, across = ay + ah <= sy, scy - acy, abs(acx - scx)
    return apart and along >= 0.05 * resolution and along >= across


def on_side(subject: Obj, anchor: Obj, direction: str) -> bool:
    (scx, scy), (acx, acy) = centre(subject), centre(anchor)
    return {"left": scx < acx, "right": scx > acx, "above": scy < acy, "below": scy > acy}[direction]


def count_phrase(verb: str, number: str, noun_words: str) -> tuple[int, dict[str, str]]:
    """``("are", "two", "red shapes")`` -> ``(2, {"colour": "red"})``, checking agreement."""
    count = NUMBERS.index(number)
    assert (verb == "is") == (count == 1)
    *modifiers, noun = noun_words.split()
    if count != 1:
        assert noun.endswith("s")
        noun = noun[:-1]
    return count, parse_mention(" ".join(["the", *modifiers, noun]))


RELATION_RE = re.compile(
    r"^(?:there is )?(?P<a>.+?) (?:is )?(?P<rel>to the left of|to the right of|left of|right of|above|below) "
    r"(?P<b>.+)$"
)
EXACT_COUNT_RE = re.compile(r"^there (is|are) exactly (\w+) (.+)$")
SINGLE_RES = (
    re.compile(r"^there is (.+)$"),
    re.compile(r"^the image contains (.+)$"),
    re.compile(r"^(.+) on a dark background$"),
)
LIST_RE = re.compile(r"^(?:an image of |a picture showing |(\w+) shapes?: )?(.+)$")


def check_caption(caption: str, objects: list[Obj], resolution: int) -> str:
    """Assert that a caption is true of the objects; return its family."""
    relation = RELATION_RE.match(caption)
    if relation:
        subject = referent(relation["a"], objects)
        anchor = referent(relation["b"], objects)
        assert subject is not anchor
        assert clearly(subject, anchor, RELATION_WORDS[relation["rel"]], resolution), caption
        return "relation"
    exact = EXACT_COUNT_RE.match(caption)
    if exact:
        count, mention = count_phrase(*exact.groups())
        assert sum(matches(mention, obj) for obj in objects) == count, caption
        return "count"
    for pattern in SINGLE_RES:
        single = pattern.match(caption)
        if single:
            referent(single[1], objects)
            return "single"
    listing = LIST_RE.match(caption)
    assert listing, caption
    if listing[1]:
        assert NUMBERS.index(listing[1]) == len(objects), caption
    parts = re.split(r", | and ", listing[2])
    named = [referent(part, objects) for part in parts]
    assert all(len(parse_mention(part)) == 4 for part in parts), (
        f"listing without full descriptions: {caption}"
    )
    assert len(named) == len(objects) and all(any(o is n for n in named) for o in objects), caption
    return "listing"


def expected_answer(question: str, objects: list[Obj], resolution: int) -> str:
    """Answer a question from the objects alone."""
    if m := re.fullmatch(r"what colour is (the .+)\?", question):
        assert "colour" not in parse_mention(m[1])
        return colour(referent(m[1], objects))
    if m := re.fullmatch(r"what shape is (the .+)\?", question):
        assert "shape" not in parse_mention(m[1])
        return referent(m[1], objects)["category"]
    if m := re.fullmatch(r"what size is (the .+)\?", question):
        assert "size" not in parse_mention(m[1])
        return referent(m[1], objects)["attributes"][1]
    if m := re.fullmatch(r"is (the .+) filled or outlined\?", question):
        assert "style" not in parse_mention(m[1])
        return referent(m[1], objects)["attributes"][2]
    if question == "how many shapes are there?":
        return NUMBERS[len(objects)]
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", question):
        return NUMBERS[sum(colour(obj) == m[1] for obj in objects)]
    if m := re.fullmatch(r"how many (\w+)s are there\?", question):
        assert m[1] in SHAPE_NAMES
        return NUMBERS[sum(obj["category"] == m[1] for obj in objects)]
    if m := re.fullmatch(r"is there (an? .+)\?", question):
        mention = parse_mention(m[1])
        return "yes" if any(matches(mention, obj) for obj in objects) else "no"
    if m := re.fullmatch(r"what is (to the left of|to the right of|above|below) (the .+)\?", question):
        anchor = referent(m[2], objects)
        direction = RELATION_WORDS[m[1]]
        near = [obj for obj in objects if obj is not anchor and on_side(obj, anchor, direction)]
        assert len(near) == 1, f"{question!r}: {len(near)} objects on that side"
        assert clearly(near[0], anchor, direction, resolution), question
        return near[0]["category"]
    raise AssertionError(f"unknown question form: {question!r}")


def statement_truth(statement: str, left: list[Obj], right: list[Obj]) -> bool:
    """Evaluate a pair statement from the two object lists alone."""
    sides = {"left": left, "right": right}

    def has(objects: list[Obj], text: str) -> bool:
        mention = parse_mention(text)
        return any(matches(mention, obj) for obj in objects)

    if m := re.fullmatch(r"both images contain (.+)", statement):
        return has(left, m[1]) and has(right, m[1])
    if m := re.fullmatch(r"neither image contains (.+)", statement):
        return not has(left, m[1]) and not has(right, m[1])
    if m := re.fullmatch(r"there is (.+) in exactly one image", statement):
        return has(left, m[1]) != has(right, m[1])
    if m := re.fullmatch(r"the (left|right) image contains exactly (\w+) shapes?", statement):
        return len(sides[m[1]]) == NUMBERS.index(m[2])
    if m := re.fullmatch(r"the (left|right) image contains (.+)", statement):
        return has(sides[m[1]], m[2])
    if m := re.fullmatch(r"the (left|right) image has more shapes than the (left|right) image", statement):
        assert m[1] != m[2]
        return len(sides[m[1]]) > len(sides[m[2]])
    if statement == "both images have the same number of shapes":
        return len(left) == len(right)
    if m := re.fullmatch(r"the two images contain (\w+) shapes in total", statement):
        return len(left) + len(right) == NUMBERS.index(m[1])
    raise AssertionError(f"unknown statement form: {statement!r}")


def records(scene: scenes.Scene) -> list[Obj]:
    return [json.loads(json.dumps(obj.to_json())) for obj in scene.objects]


def sampled_scenes(seed: int, count: int, resolution: int) -> list[tuple[scenes.Scene, np.random.Generator]]:
    rng = np.random.default_rng(seed)
    return [(sample_scene(rng, resolution), rng) for _ in range(count)]


# ------------------------------------------------------------------------------------------------ fixtures


def digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "out"
    write_shapes(out, SMALL_CONFIG)
    return out


def read_split(root: Path, split: str) -> list[dict[str, Any]]:
    urls = [str(path) for path in sorted((root / split).glob("shard-*.tar"))]
    return list(wds.WebDataset(urls, shardshuffle=False))


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# ------------------------------------------------------------------------------------------------ tests


def test_vocabulary_constants() -> None:
    assert scenes.COLOURS == COLOUR_RGB
    assert scenes.SHAPES == SHAPE_NAMES
    assert (scenes.SIZES, scenes.STYLES) == (SIZE_NAMES, STYLE_NAMES)


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_scene_geometry(resolution: int) -> None:
    counts = set()
    for scene, _ in sampled_scenes(seed=resolution, count=150, resolution=resolution):
        objects = scene.objects
        counts.add(len(objects))
        assert 1 <= len(objects) <= 4
        assert len({(o.shape, o.colour, o.size, o.style) for o in objects}) == len(objects)
        for obj in objects:
            x, y, w, h = obj.box
            assert x >= 0 and y >= 0 and x + w <= resolution and y + h <= resolution
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                (ax, ay, aw, ah), (bx, by, bw, bh) = a.box, b.box
                gap_x = max(bx - (ax + aw), ax - (bx + bw))
                gap_y = max(by - (ay + ah), ay - (by + bh))
                assert max(gap_x, gap_y) >= 1, f"{a} and {b} touch"
    assert counts == {1, 2, 3, 4}


def test_sizes_scale_with_resolution() -> None:
    for resolution in (32, 64, 128, 256):
        small, large = glyphs.object_side("small", resolution), glyphs.object_side("large", resolution)
        assert 1.6 <= large / small <= 2.0
    assert glyphs.object_side("small", 64) >= 10
    assert glyphs.outline_width(64) >= 2 and glyphs.outline_width(256) > glyphs.outline_width(64)
    for scene, _ in sampled_scenes(seed=1, count=100, resolution=64):
        for obj in scene.objects:
            minimum = 10 if obj.size == "small" else 18
            assert min(obj.box[2:]) >= minimum, obj


@pytest.mark.parametrize("resolution", [32, 64, 160])
def test_rendered_pixels_follow_boxes(resolution: int) -> None:
    for scene, rng in sampled_scenes(seed=11, count=80, resolution=resolution):
        pixels = np.asarray(render_scene(scene, resolution, rng)).astype(int)
        assert pixels.shape == (resolution, resolution, 3)
        outside = np.ones((resolution, resolution), dtype=bool)
        for obj in scene.objects:
            x, y, w, h = (int(v) for v in obj.box)
            outside[y : y + h, x : x + w] = False
            drawn = np.abs(pixels[y : y + h, x : x + w] - COLOUR_RGB[obj.colour]).max(axis=2) <= 2
            # Tight box: the shape's colour reaches every edge of its box.
            assert drawn[0].any() and drawn[-1].any() and drawn[:, 0].any() and drawn[:, -1].any(), obj
            if obj.style == "filled":
                assert drawn[h // 2, w // 2], f"filled {obj} has no colour at its centre"
            elif obj.shape != "star" and obj.size == "large":
                assert not drawn[h // 2, w // 2], f"outlined {obj} is filled at its centre"
            if obj.shape in ("square", "circle") and obj.style == "outlined":
                assert drawn.sum() < 0.8 * w * h
        assert pixels[outside].max(initial=0) <= BACKGROUND_MAX


def test_backgrounds_are_dark_and_sometimes_textured() -> None:
    textured = 0
    for scene, rng in sampled_scenes(seed=5, count=200, resolution=64):
        pixels = np.asarray(render_scene(scene, 64, rng)).astype(int)
        mask = np.ones((64, 64), dtype=bool)
        for obj in scene.objects:
            x, y, w, h = (int(v) for v in obj.box)
            mask[y : y + h, x : x + w] = False
        background = pixels[mask]
        assert background.max() <= BACKGROUND_MAX
        textured += int(background.std(axis=0).max() > 1.5)  # per channel: plain ones are tinted
    assert 30 <= textured <= 90  # textured_prob = 0.3 of 200


def test_captions_are_true() -> None:
    families: set[str] = set()
    for resolution in (48, 64, 128):
        for scene, rng in sampled_scenes(seed=resolution + 1, count=150, resolution=resolution):
            captions = captions_for(scene, rng, resolution)
            assert 3 <= len(captions) <= 5 and len(set(captions)) == len(captions)
            objects = records(scene)
            kinds = [check_caption(caption, objects, resolution) for caption in captions]
            assert "listing" in kinds, captions
            families.update(kinds)
    assert families == {"listing", "count", "single", "relation"}


def test_answers_are_true_and_balanced() -> None:
    kinds: dict[str, int] = {}
    yes_no: list[str] = []
    for resolution in (48, 64, 128):
        for scene, rng in sampled_scenes(seed=resolution + 2, count=150, resolution=resolution):
            qa = questions_for(scene, rng, resolution)
            assert 4 <= len(qa) <= 8
            assert len({pair["question"] for pair in qa}) == len(qa)
            objects = records(scene)
            for pair in qa:
                question, answers = pair["question"], pair["answers"]
                assert isinstance(answers, list) and len(set(answers)) == 1
                assert answers[0] == expected_answer(question, objects, resolution), question
                kind = question.split()[0] + " " + question.split()[1]
                kinds[kind] = kinds.get(kind, 0) + 1
                if answers[0] in ("yes", "no"):
                    yes_no.append(answers[0])
    assert {"what colour", "what shape", "what size", "is the", "how many", "is there", "what is"} <= set(
        kinds
    )
    assert 0.4 <= yes_no.count("yes") / len(yes_no) <= 0.6


def test_pair_labels_are_true_and_balanced() -> None:
    rng = np.random.default_rng(9)
    labels = []
    forms = set()
    for _ in range(500):
        left, right = sample_scene(rng, 64), sample_scene(rng, 64)
        statement, label = pair_statement(left, right, rng)
        assert isinstance(label, bool)
        assert statement_truth(statement, records(left), records(right)) == label, statement
        labels.append(label)
        forms.add(" ".join(statement.split()[:2]))
    assert 0.43 <= sum(labels) / len(labels) <= 0.57
    assert len(forms) >= 5
    forced = [pair_statement(left, right, rng, label=False)[1] for _ in range(20)]
    assert forced == [False] * 20


def test_same_seed_gives_identical_files(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    write_shapes(again, SMALL_CONFIG)
    assert digests(again) == digests(dataset)


def test_different_seed_gives_different_shards(dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_shapes(other, replace(SMALL_CONFIG, seed=4))
    first, second = digests(dataset), digests(other)
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first if name.endswith(".tar"))


def test_layout_and_stats(dataset: Path) -> None:
    assert shapes_ready(dataset)
    stats = json.loads((dataset / "stats.json").read_text())
    assert stats["config"] == asdict(SMALL_CONFIG)
    for split, count in SMALL_CONFIG.split_sizes().items():
        shards = sorted((dataset / split).glob("*.tar"))
        expected = math.ceil(count / SMALL_CONFIG.samples_per_shard)
        assert [path.name for path in shards] == [f"shard-{i:06d}.tar" for i in range(expected)]
        assert stats["splits"][split] == {"samples": count, "shards": expected}
    assert not list(dataset.parent.glob("*.tmp-*"))


def test_image_shards_round_trip(dataset: Path) -> None:
    seeds = np.random.SeedSequence(SMALL_CONFIG.seed).spawn(6)
    for split, seed in zip(("train", "val", "test"), seeds):
        samples = read_split(dataset, split)
        assert len(samples) == SMALL_CONFIG.split_sizes()[split]
        rng = np.random.default_rng(seed)
        for index, sample in enumerate(samples):
            assert sample["__key__"] == f"{split}-{index:06d}"
            assert {key for key in sample if not key.startswith("__")} == {"png", "json"}
            scene = sample_scene(rng, 64, textured_prob=SMALL_CONFIG.textured_background_prob)
            image = np.asarray(render_scene(scene, 64, rng))
            record = scene_record(scene, rng, 64)
            assert np.array_equal(decode(sample["png"]), image)
            assert json.loads(sample["json"]) == record
            assert sample["json"] == json.dumps(record, sort_keys=True).encode()
            assert set(record) == {"captions", "objects", "qa"}
            for caption in record["captions"]:
                check_caption(caption, record["objects"], 64)
            for qa in record["qa"]:
                assert qa["answers"][0] == expected_answer(qa["question"], record["objects"], 64)


def test_pair_shards_round_trip(dataset: Path) -> None:
    labels = []
    for split in ("pairs_train", "pairs_val", "pairs_test"):
        samples = read_split(dataset, split)
        assert len(samples) == SMALL_CONFIG.split_sizes()[split]
        for index, sample in enumerate(samples):
            assert sample["__key__"] == f"{split}-{index:06d}"
            assert {key for key in sample if not key.startswith("__")} == {"left.png", "right.png", "json"}
            record = json.loads(sample["json"])
            assert set(record) == {"statement", "label", "left", "right"}
            left, right = record["left"]["objects"], record["right"]["objects"]
            assert statement_truth(record["statement"], left, right) == record["label"]
            for side in ("left", "right"):
                pixels = decode(sample[f"{side}.png"])
                assert pixels.shape == (64, 64, 3)
                for obj in record[side]["objects"]:
                    x, y, w, h = (int(v) for v in obj["bbox"])
                    region = pixels[y : y + h, x : x + w].astype(int)
                    assert (np.abs(region - COLOUR_RGB[colour(obj)]).max(axis=2) <= 2).any()
            labels.append(record["label"])
    assert True in labels and False in labels


def test_vocab_covers_everything_used(dataset: Path) -> None:
    vocab = json.loads((dataset / "vocab.json").read_text())
    assert vocab["categories"] == list(SHAPE_NAMES) == vocab["shapes"]
    assert vocab["colours"] == list(COLOUR_RGB)
    assert set(vocab["attributes"]) == set(COLOUR_RGB) | set(SIZE_NAMES) | set(STYLE_NAMES)
    assert vocab["answers"] == sorted(set(vocab["answers"]))
    used_answers = set()
    for split in ("train", "val", "test", "pairs_train", "pairs_val", "pairs_test"):
        for sample in read_split(dataset, split):
            record = json.loads(sample["json"])
            scene_records = [record["left"], record["right"]] if "statement" in record else [record]
            for scene in scene_records:
                for obj in scene["objects"]:
                    assert obj["category"] in vocab["categories"]
                    assert set(obj["attributes"]) <= set(vocab["attributes"])
                used_answers |= {answer for qa in scene["qa"] for answer in qa["answers"]}
    assert used_answers == set(vocab["answers"])


def test_crashed_run_leaves_nothing_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    calls = {"count": 0}
    encode = shapes._png_bytes

    def failing(image: Image.Image) -> bytes:
        calls["count"] += 1
        if calls["count"] > 30:
            raise RuntimeError("disk full")
        return encode(image)

    monkeypatch.setattr(shapes, "_png_bytes", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_shapes(out, SMALL_CONFIG)
    assert not out.exists() and not shapes_ready(out)
    assert list(tmp_path.iterdir()) == []


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """``relative path -> (mtime_ns, sha256)`` of every file and folder under ``root``."""
    return {
        str(path.relative_to(root)): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "",
        )
        for path in sorted([root, *root.rglob("*")])
    }


def test_matching_folder_is_reused_without_rewriting(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stats = write_shapes(out, SMALL_CONFIG)
    before = snapshot(out)
    assert write_shapes(out, SMALL_CONFIG) == stats
    assert snapshot(out) == before
    stamp = json.loads((out / folder.STAMP).read_text())
    assert stamp["complete"] is True and stamp["config"] == asdict(SMALL_CONFIG)


def test_user_folder_without_stamp_is_never_touched(tmp_path: Path) -> None:
    """A folder of someone's own shards (a tar, no stamp) is not deleted or written to."""
    mine = tmp_path / "mydata"
    (mine / "train").mkdir(parents=True)
    (mine / "train" / "shard-000000.tar").write_bytes(b"my own shard")
    before = snapshot(mine)
    with pytest.raises(ShapesFolderError, match=r"no \.vlp-shapes\.json stamp") as info:
        write_shapes(
            mine, SMALL_CONFIG, root_setting="data.init_args.root", synth_setting="data.init_args.synth"
        )
    message = str(info.value)
    assert (
        str(mine) in message and "data.init_args.synth: null" in message and "data.init_args.root" in message
    )
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]  # no staging folder left either


def test_folder_of_other_settings_is_refused_listing_the_differences(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_shapes(out, SMALL_CONFIG)
    before = snapshot(out)
    other = replace(SMALL_CONFIG, train_samples=5, samples_per_shard=4)
    with pytest.raises(ShapesFolderError) as info:
        write_shapes(out, other)
    message = str(info.value)
    assert "train_samples: 40 in the folder, 5 asked" in message
    assert "samples_per_shard: 16 in the folder, 4 asked" in message
    assert "val_samples" not in message and "--out" in message
    assert snapshot(out) == before


def test_unstamped_folder_written_by_the_generator_is_recognised(tmp_path: Path) -> None:
    """A folder generated before folders were stamped: its stats.json records the settings."""
    out = tmp_path / "out"
    write_shapes(out, SMALL_CONFIG)
    (out / folder.STAMP).unlink()
    before = snapshot(out)
    write_shapes(out, SMALL_CONFIG)
    with pytest.raises(ShapesFolderError, match="seed: 3 in the folder, 4 asked"):
        write_shapes(out, replace(SMALL_CONFIG, seed=4))
    assert snapshot(out) == before


def test_empty_and_interrupted_folders_are_generated(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_shapes(empty, SMALL_CONFIG)
    assert shapes_ready(empty)
    interrupted = tmp_path / "interrupted"
    (interrupted / "train").mkdir(parents=True)
    (interrupted / "train" / "shard-000000.tar").write_bytes(b"half written")
    stamp = {"generator": folder.GENERATOR, "format_version": 1, "complete": False, "config": {}}
    (interrupted / folder.STAMP).write_text(json.dumps(stamp))
    assert folder.shapes_folder_state(interrupted).kind == "incomplete"
    write_shapes(interrupted, SMALL_CONFIG)
    assert digests(interrupted) == digests(empty)


def test_staging_folder_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = tmp_path / "out.vlp-tmp-99999999"  # no such process
    dead.mkdir()
    stamp = {
        "generator": folder.GENERATOR,
        "format_version": 1,
        "complete": False,
        "config": {},
        "host": socket.gethostname(),
        "pid": 99999999,
    }
    (dead / folder.STAMP).write_text(json.dumps(stamp))
    unrelated = tmp_path / "out.vlp-tmp-unstamped"
    unrelated.mkdir()
    write_shapes(out, SMALL_CONFIG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.vlp-tmp-unstamped"]


@pytest.mark.parametrize(
    "changes",
    [{"resolution": 8}, {"train_samples": -1}, {"samples_per_shard": 0}, {"textured_background_prob": 1.5}],
)
def test_config_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ShapesConfig(**changes)
