"""Shapes caption edits: one word of its kind changed, every edit a caption the check can read, none that
the text alone would give away."""

from __future__ import annotations

import numpy as np

from vlp.datamodules.synth.edits import ShapesCaptionEditor
from vlp.datamodules.synth.scenes import COLOUR_NAMES, sample_scene
from vlp.datamodules.synth.text import captions_for
from vlp.datamodules.synth.truth import caption_family, caption_holds

EDITOR = ShapesCaptionEditor()
OTHER_COLOURS = [c for c in COLOUR_NAMES if c != "red"]


def test_a_count_caption_changes_its_colour_or_its_number() -> None:
    edits = EDITOR.edits("there are exactly two red shapes")
    assert edits == [f"there are exactly two {c} shapes" for c in OTHER_COLOURS] + [
        "there are exactly three red shapes",
        "there are exactly four red shapes",
    ]
    # "one" takes the singular: no number edit would be a caption the generator writes
    assert all("one" in edit for edit in EDITOR.edits("there is exactly one red shape"))


def test_a_relation_changes_a_word_or_its_side() -> None:
    edits = EDITOR.edits("the small red circle is to the left of the blue square")
    assert "the small red circle is to the right of the blue square" in edits
    assert "the large red circle is to the left of the blue square" in edits
    assert "the small red square is to the left of the blue square" in edits
    assert "the small red circle is below the blue square" not in edits  # a side flips to its opposite
    assert EDITOR.edits("a red circle above a blue square")[-1] == "a red circle below a blue square"


def test_no_edit_names_a_description_twice_or_changes_a_listing_count() -> None:
    edits = EDITOR.edits("a red circle left of a blue circle")
    assert (
        "a red circle left of a red circle" not in edits
        and "a blue circle left of a blue circle" not in edits
    )
    listing = "two shapes: a small red filled circle and a small blue filled circle"
    edits = EDITOR.edits(listing)
    assert not any(edit.startswith(("one", "three", "four")) for edit in edits)
    assert listing.replace("blue", "red") not in edits


def test_every_edit_of_every_generated_caption_reads_and_changes_one_word_or_side() -> None:
    rng = np.random.default_rng(0)
    changed = flipped = 0
    for _ in range(60):
        scene = sample_scene(rng, 64)
        for caption in captions_for(scene, rng, 64):
            for edit in EDITOR.edits(caption):
                assert caption_family(edit) == caption_family(caption), (caption, edit)
                before, after = caption.split(), edit.split()
                differing = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
                assert len(before) == len(after) and len(differing) == 1, (caption, edit)
                flipped += not caption_holds(edit, scene.objects)
                changed += 1
    assert changed > 1000
    assert flipped > 0.8 * changed  # most edits are false of the scene; the collator keeps only those
