"""ERNIE-ViLG pattern masks: explicit small cases, a brute-force reading of the documented rule, the
layout arithmetic, the paper's layer schedule, and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from vlp.models.ernie_vilg.seq2seq_mask import seq2seq_mask
from vlp.models.ernie_vilg.sparse_patterns import ImageTextLayout, ernie_vilg_schedule, pattern_mask


def brute_force(layout: ImageTextLayout, kind: str, context: int, kernel_size: int) -> torch.Tensor:
    """The module docstring's rule, one (query, key) pair at a time."""
    batch = 1 if layout.key_mask is None else layout.key_mask.shape[0]
    n, w = layout.length, layout.grid[1]

    def describe(position: int) -> tuple[bool, int, int, int]:  # (is image, raster / text index, row, col)
        if layout.image_start <= position < layout.image_start + layout.image_len:
            raster = position - layout.image_start
            return True, raster, raster // w, raster % w
        return False, position - layout.text_start, -1, -1

    mask = torch.zeros(batch, 1, n, n, dtype=torch.bool)
    for b, i, j in itertools.product(range(batch), range(n), range(n)):
        (qi, qpos, qr, qc), (ki, kpos, kr, kc) = describe(i), describe(j)
        real = layout.key_mask is None or bool(layout.key_mask[b, j])
        q_source, k_source = qi != layout.image_is_target, ki != layout.image_is_target
        if k_source:
            seq2seq = True
        else:  # a target key: only a target query at or after it (same segment, so compare indices)
            seq2seq = not q_source and kpos <= qpos
        near = True
        if qi and ki:
            if kind == "row":
                near = abs(qr - kr) <= context
            elif kind == "column":
                near = abs(qc - kc) <= context
            elif kind == "conv":
                near = abs(qr - kr) <= kernel_size // 2 and abs(qc - kc) <= kernel_size // 2
        mask[b, 0, i, j] = i == j or (seq2seq and near and real)
    return mask


def test_row_text_to_image_explicit() -> None:
    # [t0 t1 | i00 i01 i02 i10 i11 i12]: image rows are causal and private
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0, 1, 0, 0],
            [1, 1, 0, 0, 0, 1, 1, 0],
            [1, 1, 0, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(pattern_mask("row", (2, 3), 2, "text_to_image")[0, 0], expected)


def test_column_text_to_image_explicit() -> None:
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 0, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 1, 0, 0],
            [1, 1, 0, 1, 0, 0, 1, 0],
            [1, 1, 0, 0, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(pattern_mask("column", (2, 3), 2, "text_to_image")[0, 0], expected)


def test_row_image_to_text_explicit() -> None:
    # [i00 i01 i02 i10 i11 i12 | t0 t1]: image rows bidirectional and blind to the text target
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(pattern_mask("row", (2, 3), 2, "image_to_text")[0, 0], expected)


def test_conv_causal_window_explicit() -> None:
    # 3 x 3 grid, no text, k = 3: the causal half of the window
    image = pattern_mask("conv", (3, 3), 0, "text_to_image", kernel_size=3)[0, 0]
    assert image[4].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]  # (1, 1): row above and left
    assert image[6].nonzero().flatten().tolist() == [3, 4, 6]  # (2, 0): (1, 0), (1, 1), itself
    assert image[2].nonzero().flatten().tolist() == [1, 2]  # (0, 2): left neighbour, itself
    bidirectional = pattern_mask("conv", (3, 3), 0, "image_to_text", kernel_size=3)[0, 0]
    assert bidirectional[4].all() and bidirectional[0].nonzero().flatten().tolist() == [0, 1, 3, 4]


@pytest.mark.parametrize("kind", ["dense", "row", "column", "conv"])
@pytest.mark.parametrize("direction", ["text_to_image", "image_to_text"])
@pytest.mark.parametrize("source_first", [True, False])
def test_pattern_mask_matches_the_documented_rule(kind: str, direction: str, source_first: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    base = ImageTextLayout(3, (3, 4), direction, source_first)
    key_mask = torch.rand(2, base.length, generator=generator) > 0.25
    layout = ImageTextLayout(3, (3, 4), direction, source_first, key_mask)
    for context, kernel_size in [(0, 3), (1, 5)]:
        mask = pattern_mask(
            kind, (3, 4), 3, direction, source_first=source_first, key_mask=key_mask,
            context=context, kernel_size=kernel_size,
        )  # fmt: skip
        assert torch.equal(mask, brute_force(layout, kind, context, kernel_size)), (context, kernel_size)


def test_dense_pattern_is_the_seq2seq_mask() -> None:
    key_mask = torch.ones(2, 3 + 6, dtype=torch.bool)
    key_mask[1, 2] = False  # the last text token of the second sample
    dense = pattern_mask("dense", (2, 3), 3, "text_to_image", key_mask=key_mask)
    assert torch.equal(dense, seq2seq_mask(3, 6, key_mask[:, :3], key_mask[:, 3:]))


@pytest.mark.parametrize(
    ("direction", "source_first", "text_start", "image_start"),
    [
        ("text_to_image", True, 0, 3),
        ("text_to_image", False, 6, 0),
        ("image_to_text", True, 6, 0),
        ("image_to_text", False, 0, 3),
    ],
)
def test_layout_positions(direction: str, source_first: bool, text_start: int, image_start: int) -> None:
    layout = ImageTextLayout(3, (2, 3), direction, source_first)
    assert (layout.text_start, layout.image_start, layout.length) == (text_start, image_start, 9)
    assert layout.source_len == (3 if direction == "text_to_image" else 6)


def test_paper_schedule_and_user_lists() -> None:
    assert ernie_vilg_schedule(4) == ["row", "row", "column", "conv"]
    assert ernie_vilg_schedule(8) == ["row", "row", "column", "row", "row", "row", "column", "conv"]
    assert ernie_vilg_schedule(1) == ["conv"]
    assert ernie_vilg_schedule(2, ["dense", "row"]) == ["dense", "row"]
    with pytest.raises(ValueError, match="depth 3"):
        ernie_vilg_schedule(3, ["row", "row"])
    with pytest.raises(ValueError, match="diagonal"):
        ernie_vilg_schedule(2, ["row", "diagonal"])
    with pytest.raises(ValueError, match="depth"):
        ernie_vilg_schedule(0)


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="key_mask"):
        ImageTextLayout(2, (2, 2), key_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="direction"):
        ImageTextLayout(2, (2, 2), "text2image")
    with pytest.raises(ValueError, match="grid"):
        ImageTextLayout(2, (0, 2))
    with pytest.raises(ValueError, match="kind"):
        pattern_mask("diagonal", (2, 2), 2, "text_to_image")
    with pytest.raises(ValueError, match="kernel_size"):
        pattern_mask("conv", (2, 2), 2, "text_to_image", kernel_size=4)
    with pytest.raises(ValueError, match="context"):
        pattern_mask("row", (2, 2), 2, "text_to_image", context=-1)
