"""Visual Genome converter: tiny raw trees in the published schemas (v1.2/v1.4 and the older key names),
records checked exactly, boxes clipped and degenerate ones dropped, vocabulary filter, COCO exclusion,
the streaming list reader, and a round trip through the writer and vlp's E2E decoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from convert_helpers import read_back, write_image, write_json, xywh_to_cxcywh

from vlp.datamodules.convert.base import InputTreeError
from vlp.datamodules.convert.visual_genome import VisualGenomeConverter, iter_json_array, read_name_vocab

URL = "https://cs.stanford.edu/people/rak248/{folder}/{id}.jpg"
# image id -> (folder, width, height, coco_id, flickr_id); image 3's file is missing.
IMAGES = {
    1: ("VG_100K_2", 32, 32, None, None),
    2: ("VG_100K", 32, 24, 139, 2345),
    3: ("VG_100K", 32, 32, None, None),
    4: ("VG_100K", 32, 32, 397133, None),
    5: ("VG_100K_2", 32, 32, None, None),
}
OBJECTS = {
    1: [
        {"object_id": 101, "x": 2, "y": 3, "w": 10, "h": 8, "names": ["Trees "], "merged_object_ids": []},
        {"object_id": 102, "x": 25, "y": 20, "w": 20, "h": 20, "names": ["car"], "merged_object_ids": [150]},
        {"object_id": 103, "x": 40, "y": 5, "w": 3, "h": 3, "names": ["bird"], "merged_object_ids": []},
        {"object_id": 104, "x": 5, "y": 5, "w": 0, "h": 4, "names": ["pole"], "merged_object_ids": []},
        {"object_id": 105, "x": 0, "y": 0, "w": 4, "h": 4, "names": ["shiny shirt"], "merged_object_ids": []},
    ],
    2: [
        {
            "object_id": 201,
            "x": -3,
            "y": 2,
            "w": 10,
            "h": 30,
            "names": ["Man", "person"],
            "merged_object_ids": [],
        },
        {"object_id": 202, "x": 1, "y": 1, "w": 5, "h": 5, "names": ["cars"], "merged_object_ids": []},
    ],
    3: [{"object_id": 301, "x": 1, "y": 1, "w": 5, "h": 5, "names": ["dog"], "merged_object_ids": []}],
    4: [],
    5: [],
}
ATTRIBUTES = {
    1: [
        {"object_id": 101, "attributes": ["Green", "tall "]},
        {"object_id": 150, "attributes": ["Metal"]},  # merged into object 102 (v1.4)
        {"object_id": 102, "attributes": ["Red."]},
        {"object_id": 999, "attributes": ["unused"]},  # no such object
    ],
    2: [{"object_id": 201}, {"object_id": 202, "attributes": ["Shiny"]}],  # 201 without "attributes"
    3: [],
    4: [],
    5: [],
}
PHRASES = {
    1: ["green  trees ", "a red car", "green trees", "  "],
    2: ["a man standing"],
    3: ["a dog"],
    4: ["a kitchen"],
    5: [],
}
QAS = {
    1: [{"qa_id": 11, "question": "What color is the car?", "answer": "Red."}],
    2: [
        {"qa_id": 21, "question": "Who is standing? ", "answer": "A man."},
        {"qa_id": 22, "question": "Why?", "answer": ""},
    ],
    3: [],
    4: [],
    5: [],
}


def write_vg(root: Path, old_keys: bool = False, skip_image: int = 3) -> Path:
    """The raw tree: v1.2/v1.4 key names, or (``old_keys``) ``id`` for image ids and ``name`` for objects."""
    image_key = "id" if old_keys else "image_id"
    images = []
    for image_id, (folder, width, height, coco_id, flickr_id) in IMAGES.items():
        images.append(
            {
                "width": width,
                "url": URL.format(folder=folder, id=image_id),
                "height": height,
                image_key: image_id,
                "coco_id": coco_id,
                "flickr_id": flickr_id,
            }
        )
        if image_id != skip_image:
            write_image(root / folder / f"{image_id}.jpg", size=(width, height), colour=image_id)
    (root / "VG_100K").mkdir(exist_ok=True)
    (root / "VG_100K_2").mkdir(exist_ok=True)
    write_json(root / "image_data.json", images)

    def objects(image_id: int) -> list[dict[str, Any]]:
        found = []
        for obj in OBJECTS[image_id]:
            obj = {**obj, "synsets": []}
            if old_keys:
                obj["id"] = obj.pop("object_id")
                obj["name"] = obj.pop("names")[0]
                del obj["merged_object_ids"]
            found.append(obj)
        return found

    write_json(
        root / "objects.json",
        [
            {image_key: i, "objects": objects(i), "image_url": URL.format(folder="VG_100K", id=i)}
            for i in IMAGES
        ],
    )

    def attributes(image_id: int) -> list[dict[str, Any]]:
        found = []
        for entry in ATTRIBUTES[image_id]:
            entry = {**entry, "x": 0, "y": 0, "w": 1, "h": 1, "names": ["x"], "synsets": []}
            if old_keys:
                entry["id"] = entry.pop("object_id")
            found.append(entry)
        return found

    write_json(root / "attributes.json", [{image_key: i, "attributes": attributes(i)} for i in IMAGES])
    region_key = "image_id" if old_keys else "id"  # the key that differs between releases
    regions = [
        {
            region_key: i,
            "regions": [
                {"region_id": 10 * i + n, "width": 5, "height": 5, "image_id": i, "phrase": p, "y": 0, "x": 0}
                for n, p in enumerate(PHRASES[i])
            ],
        }
        for i in IMAGES
    ]
    write_json(root / "region_descriptions.json", regions)
    qas = [
        {"id": i, "qas": [{**qa, "image_id": i, "a_objects": [], "q_objects": []} for qa in QAS[i]]}
        for i in IMAGES
    ]
    write_json(root / "question_answers.json", qas)
    return root


EXPECTED = {
    "1": {
        "source": {"dataset": "visual-genome", "image_id": 1},
        "captions": ["green trees", "a red car"],
        "objects": [
            {"bbox": [2, 3, 10, 8], "category": "trees", "attributes": ["green", "tall"]},
            {"bbox": [25, 20, 7, 12], "category": "car", "attributes": ["red", "metal"]},
            {"bbox": [0, 0, 4, 4], "category": "shiny shirt", "attributes": []},
        ],
        "qa": [{"question": "What color is the car?", "answers": ["Red."], "qa_id": 11}],
    },
    "2": {
        "source": {"dataset": "visual-genome", "image_id": 2, "coco_id": 139, "flickr_id": 2345},
        "captions": ["a man standing"],
        "objects": [
            {"bbox": [0, 2, 7, 22], "category": "man", "attributes": []},
            {"bbox": [1, 1, 5, 5], "category": "cars", "attributes": ["shiny"]},
        ],
        "qa": [{"question": "Who is standing?", "answers": ["A man."], "qa_id": 21}],
    },
    "4": {
        "source": {"dataset": "visual-genome", "image_id": 4, "coco_id": 397133},
        "captions": ["a kitchen"],
        "objects": [],
        "qa": [],
    },
}
DROPPED = [
    ("1/103", "bbox [40, 5, 3, 3] has no area inside the 32x32 image"),
    ("1/104", "bbox [5, 5, 0, 4] has no area inside the 32x32 image"),
    ("3", "no image file (VG_100K/3.jpg or VG_100K_2/3.jpg)"),
    ("5", "no usable annotation (none of: captions, objects, qa)"),
]


@pytest.mark.parametrize("old_keys", [False, True], ids=["v1.2-keys", "old-keys"])
def test_records_merge_every_file_per_image(tmp_path: Path, old_keys: bool) -> None:
    root = write_vg(tmp_path / "vg", old_keys=old_keys)
    converter = VisualGenomeConverter(root)
    converter.check()
    assert converter.splits() == ["train"]
    records = list(converter.records("train"))
    expected = json.loads(json.dumps(EXPECTED))
    if old_keys:  # no merged_object_ids: the attributes of object 150 stay apart
        expected["1"]["objects"][1]["attributes"] = ["red"]
    assert {r.key: r.json for r in records} == expected
    assert [r.images for r in records] == [
        {"jpg": root / "VG_100K_2" / "1.jpg"},
        {"jpg": root / "VG_100K" / "2.jpg"},
        {"jpg": root / "VG_100K" / "4.jpg"},
    ]
    assert converter.dropped() == DROPPED
    assert converter.vocab() == {
        "categories": ["car", "cars", "man", "shiny shirt", "trees"],
        "attributes": ["green", "red", "shiny", "tall"]
        if old_keys
        else ["green", "metal", "red", "shiny", "tall"],
    }


def test_image_found_in_the_other_folder_and_captions_capped(tmp_path: Path) -> None:
    root = write_vg(tmp_path / "vg")
    (root / "VG_100K_2" / "1.jpg").rename(root / "VG_100K" / "1.jpg")  # the url names VG_100K_2
    converter = VisualGenomeConverter(root, max_captions=1)
    records = {r.key: r for r in converter.records("train")}
    assert records["1"].images == {"jpg": root / "VG_100K" / "1.jpg"}
    assert records["1"].json["captions"] == ["green trees"]
    assert records["2"].json["captions"] == ["a man standing"]


def write_vocab(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_vocabulary_files_filter_categories_and_attributes(tmp_path: Path) -> None:
    root = write_vg(tmp_path / "vg")
    objects = write_vocab(tmp_path / "objects_vocab.txt", ["car,cars", "trees,tree", "Man", "bird", "car"])
    attributes = write_vocab(tmp_path / "attributes_vocab.txt", ["green", "red"])
    converter = VisualGenomeConverter(root, object_vocab=objects, attribute_vocab=attributes)
    assert objects in converter.required() and attributes in converter.annotation_files()
    records = {r.key: r.json["objects"] for r in converter.records("train")}
    assert records["1"] == [
        {"bbox": [2, 3, 10, 8], "category": "trees", "attributes": ["green"]},
        {"bbox": [25, 20, 7, 12], "category": "car", "attributes": ["red"]},
    ]
    assert records["2"] == [
        {"bbox": [0, 2, 7, 22], "category": "man", "attributes": []},
        {"bbox": [1, 1, 5, 5], "category": "car", "attributes": []},  # "cars" is a synonym of car
    ]
    assert converter.dropped() == [
        *DROPPED,
        ("category 'shiny shirt'", f"not in object_vocab ({objects}): 1 object(s) dropped"),
        ("attribute 'metal'", f"not in attribute_vocab ({attributes}): removed from 1 object(s)"),
        ("attribute 'shiny'", f"not in attribute_vocab ({attributes}): removed from 1 object(s)"),
        ("attribute 'tall'", f"not in attribute_vocab ({attributes}): removed from 1 object(s)"),
    ]
    # The files' classes in their order (a repeated one once), whatever the images hold.
    assert converter.vocab() == {
        "categories": ["car", "trees", "man", "bird"],
        "attributes": ["green", "red"],
    }


def test_images_of_excluded_coco_ids_are_dropped(tmp_path: Path) -> None:
    root = write_vg(tmp_path / "vg")
    exclude = write_vocab(
        tmp_path / "karpathy_test_images.txt",
        ["# COCO val/test", "val2014/COCO_val2014_000000397133.jpg 397133", "", "42"],
    )
    converter = VisualGenomeConverter(root, exclude_coco_ids=exclude)
    assert [r.key for r in converter.records("train")] == ["1", "2"]
    assert ("4", f"coco_id 397133 is in exclude_coco_ids ({exclude})") in converter.dropped()
    bad = write_vocab(tmp_path / "bad.txt", ["139", "COCO_val2014_000000000042.jpg"])
    with pytest.raises(ValueError, match=r"bad\.txt:2: 'COCO_val2014_000000000042\.jpg' does not end with"):
        list(VisualGenomeConverter(root, exclude_coco_ids=bad).records("train"))


def test_parts_choose_the_files_read_and_the_keys_written(tmp_path: Path) -> None:
    root = write_vg(tmp_path / "vg")
    (root / "objects.json").unlink()
    (root / "question_answers.json").unlink()
    converter = VisualGenomeConverter(root, objects=False, qa=False)
    converter.check()  # the files of the parts left out are not needed
    records = {r.key: r.json for r in converter.records("train")}
    assert records == {
        key: {k: v for k, v in EXPECTED[key].items() if k in ("source", "captions")}
        for key in ("1", "2", "4")
    }
    assert converter.vocab() is None
    assert converter.dropped() == [DROPPED[2], ("5", "no usable annotation (none of: captions)")]
    with pytest.raises(ValueError, match="every part is off"):
        VisualGenomeConverter(root, captions=False, objects=False, qa=False)


def test_check_names_every_missing_file(tmp_path: Path) -> None:
    root = write_vg(tmp_path / "vg")
    (root / "attributes.json").unlink()
    (root / "region_descriptions.json").unlink()
    for image in (root / "VG_100K_2").iterdir():
        image.unlink()
    (root / "VG_100K_2").rmdir()
    converter = VisualGenomeConverter(root, object_vocab=tmp_path / "objects_vocab.txt")
    with pytest.raises(InputTreeError) as error:
        converter.check()
    message = str(error.value)
    assert "missing 4 file(s)/folder(s)" in message
    for missing in ("attributes.json", "region_descriptions.json", "VG_100K_2", "objects_vocab.txt"):
        assert missing in message


def test_files_out_of_image_data_order_are_refused(tmp_path: Path) -> None:
    root = write_vg(tmp_path / "vg")
    objects = json.loads((root / "objects.json").read_text())
    write_json(root / "objects.json", [objects[1], objects[0], *objects[2:]])
    with pytest.raises(
        ValueError, match=r"objects\.json: entry 0 is image 2, where image_data\.json has image 1"
    ):
        list(VisualGenomeConverter(root).records("train"))
    write_json(root / "objects.json", objects[:4])
    with pytest.raises(ValueError, match=r"objects\.json ends after 4 images"):
        list(VisualGenomeConverter(root).records("train"))


def test_json_lists_are_streamed_one_entry_at_a_time(tmp_path: Path) -> None:
    entries = [
        {"id": 1, "phrase": "caf\u00e9 \u2603", "x": 12345678},
        [],
        3.5,
        {"a": {"b": [1, 2, "]"]}},
        -70,
    ]
    path = tmp_path / "list.json"
    path.write_text(" \n" + json.dumps(entries, indent=1, ensure_ascii=False), encoding="utf-8")
    for chunk in (1, 3, 7, 1 << 20):  # entries, strings and numbers cut at every place
        assert list(iter_json_array(path, chunk_chars=chunk)) == entries
    path.write_text("[ ]", encoding="utf-8")
    assert list(iter_json_array(path)) == []
    # Entries are yielded as they are read: the first two come before the broken third is reached.
    path.write_text('[{"a": 1}, {"b": 2}, {"c": ]', encoding="utf-8")
    stream = iter_json_array(path, chunk_chars=4)
    assert [next(stream), next(stream)] == [{"a": 1}, {"b": 2}]
    with pytest.raises(ValueError, match=r"list\.json: entry 2 is not valid JSON"):
        next(stream)
    path.write_text('{"images": []}', encoding="utf-8")
    with pytest.raises(ValueError, match="it is not a JSON list"):
        list(iter_json_array(path))


def test_vocabulary_file_synonyms_map_to_the_first_name(tmp_path: Path) -> None:
    vocab = read_name_vocab(write_vocab(tmp_path / "v.txt", ["Car, cars ", "", "bag,car", "bag"]))
    assert vocab.names == ["car", "bag"]
    assert vocab.lookup == {"car": "car", "cars": "car", "bag": "bag"}
    with pytest.raises(ValueError, match=r"empty\.txt lists no names"):
        read_name_vocab(write_vocab(tmp_path / "empty.txt", [""]))


def test_written_shards_decode_to_the_same_boxes_and_categories(tmp_path: Path) -> None:
    from vlp.datamodules.convert.writer import write_shards

    root = write_vg(tmp_path / "vg")
    objects = write_vocab(tmp_path / "objects_vocab.txt", ["car,cars", "trees", "man"])
    converter = VisualGenomeConverter(root, object_vocab=objects)
    out = tmp_path / "out"
    manifest = write_shards(converter, out, workers=1, samples_per_shard=2, progress=False)
    assert manifest.splits["train"].samples == 3
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["categories"] == ["car", "trees", "man"]
    found = read_back(out, "train", detection=True)
    assert sorted(found) == ["1", "2", "4"]
    for key, sizes in (("1", (32, 32)), ("2", (32, 24)), ("4", (32, 32))):
        kept = [obj for obj in EXPECTED[key]["objects"] if obj["category"] != "shiny shirt"]
        targets = found[key]["targets"]
        assert found[key]["captions"] == EXPECTED[key]["captions"]
        expected_boxes = [xywh_to_cxcywh(obj["bbox"], *sizes) for obj in kept]
        # Both sides compute the same double expressions of small integers, rounded once to float32.
        assert torch.equal(targets.boxes, torch.tensor(expected_boxes).reshape(-1, 4))
        labels = ["car" if obj["category"] == "cars" else obj["category"] for obj in kept]
        assert targets.labels.tolist() == [vocab["categories"].index(name) for name in labels]
        rows = [[float(name in obj["attributes"]) for name in vocab["attributes"]] for obj in kept]
        assert targets.attributes.tolist() == rows
