"""E2E-VLP batches: detection targets from the json's objects, caption tokens, references, the controls."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from shard_helpers import data_module

from vlp.batch import Batch
from vlp.datamodules.decode import DecodedSample, SampleDecoder, SkippedSample
from vlp.datamodules.e2e import E2ECollator, ObjectDecoder, ObjectSample, parse_objects
from vlp.datamodules.parts import Vocab
from vlp.tokenizers import load_tokenizer

CATEGORIES = {"circle": 0, "square": 1}
ATTRIBUTES = {"red": 0, "small": 1, "large": 2}


def test_pixel_xywh_boxes_become_normalised_cxcywh_with_vocabulary_labels() -> None:
    objects = [
        {"bbox": [10, 20, 30, 10], "category": "square", "attributes": ["red", "large"]},
        {"bbox": [-4, 0, 14, 8], "category": "circle", "attributes": []},  # clipped at the left edge
    ]
    targets = parse_objects(objects, (40, 80), CATEGORIES, ATTRIBUTES)  # 40 high, 80 wide
    torch.testing.assert_close(
        targets.boxes, torch.tensor([[25 / 80, 25 / 40, 30 / 80, 10 / 40], [5 / 80, 4 / 40, 10 / 80, 8 / 40]])
    )
    assert targets.labels.tolist() == [1, 0]
    assert targets.attributes.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    empty = parse_objects([], (40, 80), CATEGORIES, ATTRIBUTES)
    assert empty.boxes.shape == (0, 4) and empty.attributes.shape == (0, 3)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"bbox": [1, 2, 3], "category": "circle"}, r"objects\[0\]\.bbox must be 4 finite numbers"),
        ({"bbox": [100, 2, 3, 3], "category": "circle"}, r"objects\[0\]\.bbox .* has no area"),
        ({"bbox": [1, 2, 3, 3], "category": "blob"}, r"objects\[0\]\.category 'blob' is not in"),
        (
            {"bbox": [1, 2, 3, 3], "category": "circle", "attributes": ["huge"]},
            r"objects\[0\]\.attributes: 'huge'",
        ),
    ],
)
def test_a_bad_object_is_named(obj: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_objects([obj], (40, 80), CATEGORIES, ATTRIBUTES)


def sample(i: int, objects: list[dict]) -> dict:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (i, i, i)).save(buffer, format="png")
    return {
        "__key__": f"k{i}",
        "png": buffer.getvalue(),
        "json": json.dumps({"captions": ["a red circle", "one shape"], "objects": objects}).encode(),
    }


def test_decoder_skips_a_sample_with_a_bad_object_naming_the_field() -> None:
    vocab = Vocab(lists={"categories": list(CATEGORIES), "attributes": list(ATTRIBUTES)})
    decoder = ObjectDecoder().bind(lambda image: torch.zeros(3, 32, 32), vocab)
    good = decoder(sample(1, [{"bbox": [0, 0, 16, 8], "category": "circle", "attributes": ["red"]}]))
    assert isinstance(good, ObjectSample)
    torch.testing.assert_close(good.targets.boxes, torch.tensor([[0.25, 0.125, 0.5, 0.25]]))
    bad = decoder(sample(2, [{"bbox": [0, 0, 16, 8], "category": "blob"}]))
    assert isinstance(bad, SkippedSample) and "objects[0].category 'blob'" in bad.reason


def test_collator_adds_targets_caption_tokens_and_every_reference() -> None:
    targets = parse_objects([{"bbox": [0, 0, 4, 4], "category": "square"}], (8, 8), CATEGORIES, ATTRIBUTES)
    samples = [
        ObjectSample(
            key=f"s{i}",
            image=torch.full((3, 8, 8), float(i)),
            captions=[f"{w} red circle", "x"],
            targets=targets,
        )
        for i, w in enumerate(["one", "a big"])
    ]
    collate = E2ECollator(mlm_probability=0.0, itm=False).for_split(train=True)
    batch = collate([*samples, SkippedSample("bad", "why")], torch.Generator().manual_seed(0))
    assert batch.num_skipped == 1 and batch.keys == ["s0", "s1"]
    assert batch.targets == [targets, targets]
    assert batch.references == [["one red circle", "x"], ["a big red circle", "x"]]
    tokenizer = load_tokenizer()
    assert torch.equal(batch.caption_ids, batch.text_ids) and torch.equal(batch.caption_mask, batch.text_mask)
    for row, mask, caption in zip(batch.caption_ids, batch.caption_mask, batch.captions):
        real = row[mask].tolist()
        assert real[0] == tokenizer.cls_token_id and real[-1] == tokenizer.sep_token_id  # BOS ... EOS
        assert tokenizer.decode(real, skip_special_tokens=True) == caption
    assert (batch.caption_ids[~batch.caption_mask] == tokenizer.pad_token_id).all()
    plain = E2ECollator(mlm_probability=0.0, itm=False, targets=False, captions=False).for_split(train=True)(
        samples
    )
    assert plain.targets is None and plain.caption_ids is None and plain.references is not None
    with pytest.raises(ValueError, match=r"carry no detection targets: decode them with ObjectDecoder"):
        E2ECollator(mlm_probability=0.0, itm=False).for_split(train=True)(
            [DecodedSample("d", torch.zeros(3, 8, 8), ["c"])]
        )


def first_batch(root: Path, split: str = "val", detection: bool = True, **collator: object) -> Batch:
    decoder = ObjectDecoder() if detection else SampleDecoder()
    module = data_module(
        root, decoder, E2ECollator(targets=detection, **collator), patch_size=32, batch_size=4, num_workers=0
    )
    module.setup("fit")
    loader = module.train_dataloader() if split == "train" else module.val_dataloader()
    return next(iter(loader))


def shard_annotations(root: Path, split: str) -> dict[str, dict]:
    found = {}
    for shard in sorted((root / split).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    found[member.name[: -len(".json")]] = json.loads(tar.extractfile(member).read())
    return found


def test_shapes_batches_carry_the_boxes_and_labels_of_their_json(tiny_shapes: Path) -> None:
    batch = first_batch(tiny_shapes)
    vocab = json.loads((tiny_shapes / "vocab.json").read_text())
    annotations = shard_annotations(tiny_shapes, "val")
    assert batch.mlm_text_ids is not None and batch.itm_labels is not None  # pre-training views kept
    for key, target, refs in zip(batch.keys, batch.targets, batch.references):
        objects = annotations[key]["objects"]
        assert refs == annotations[key]["captions"]
        assert target.labels.tolist() == [vocab["categories"].index(o["category"]) for o in objects]
        for box, obj in zip(target.boxes.tolist(), objects):
            x, y, w, h = obj["bbox"]
            assert box == pytest.approx([(x + w / 2) / 32, (y + h / 2) / 32, w / 32, h / 32])
        assert target.attributes.sum().item() == sum(len(o["attributes"]) for o in objects)


def test_shuffle_eval_images_replaces_validation_images_too(tiny_shapes: Path) -> None:
    clean = first_batch(tiny_shapes)
    train_only = first_batch(tiny_shapes, shuffle_images=True)
    everywhere = first_batch(tiny_shapes, shuffle_images=True, shuffle_eval_images=True)
    assert torch.equal(clean.pixels, train_only.pixels)  # validation keeps true pairs by default
    assert clean.keys == everywhere.keys and clean.references == everywhere.references
    for i in range(len(clean)):  # every image replaced by another sample's
        assert not torch.equal(everywhere.pixels[i], clean.pixels[i])
        assert any(torch.equal(everywhere.pixels[i], clean.pixels[j]) for j in range(len(clean)) if j != i)
    with pytest.raises(ValueError, match="shuffle_eval_images=True needs shuffle_images=True"):
        E2ECollator(shuffle_eval_images=True)


def test_detection_needs_categories_in_the_vocabulary(tiny_shapes: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    root.mkdir()
    (root / "val").symlink_to(tiny_shapes / "val")
    (root / "vocab.json").write_text("{}")
    with pytest.raises(
        ValueError, match=r"vocab.json has no 'categories' list: detection classifies over it"
    ):
        first_batch(root)
    assert first_batch(root, detection=False).targets is None


def annotated_sample(i: int, annotation: dict) -> dict:
    """A png sample whose json is ``annotation`` with a caption."""
    encoded = sample(i, [])
    encoded["json"] = json.dumps({"captions": ["a shape"], **annotation}).encode()
    return encoded


def test_a_sample_without_objects_is_not_annotated_and_objects_empty_is() -> None:
    vocab = Vocab(lists={"categories": list(CATEGORIES), "attributes": list(ATTRIBUTES)})
    decoder = ObjectDecoder().bind(lambda image: torch.zeros(3, 32, 32), vocab)
    boxes = decoder(annotated_sample(1, {"objects": [{"bbox": [0, 0, 16, 8], "category": "circle"}]}))
    empty = decoder(annotated_sample(2, {"objects": []}))  # annotated: an image with no object
    captions_only = decoder(annotated_sample(3, {}))  # COCO converted without its instances
    null = decoder(annotated_sample(4, {"objects": None}))
    assert [s.annotated for s in (boxes, empty, captions_only, null)] == [True, True, False, False]
    for decoded in (empty, captions_only, null):
        assert decoded.targets.boxes.shape == (0, 4) and decoded.targets.attributes.shape == (0, 3)
    collate = E2ECollator(mlm_probability=0.0, itm=False).for_split(train=True)
    batch = collate([boxes, captions_only, empty], torch.Generator().manual_seed(0))
    assert batch.objects_annotated == [True, False, True]
    assert [len(t.labels) for t in batch.targets] == [1, 0, 0]
    plain = E2ECollator(mlm_probability=0.0, itm=False, targets=False).for_split(train=True)([boxes])
    assert plain.objects_annotated is None


def test_shapes_batches_have_every_image_annotated(tiny_shapes: Path) -> None:
    batch = first_batch(tiny_shapes)
    assert batch.objects_annotated == [True] * len(batch)
