"""Block plans of the sparse kernels: tiling with halos, geometry per pattern, the raster order map,
and that every block holds every key its queries may attend to."""

from __future__ import annotations

import pytest
import torch

from vlp.models.ernie_vilg.sparse_blocks import block_geometry, block_plan, padded, to_blocks
from vlp.models.ernie_vilg.sparse_patterns import ImageTextLayout, SparsePattern, pattern_mask


def test_to_blocks_pads_and_widens_explicitly() -> None:
    grid = torch.arange(6).view(2, 3)  # 0 1 2 / 3 4 5
    assert to_blocks(grid, (1, 3), (0, 0, 0, 0), -1).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert to_blocks(grid, (1, 3), (1, 0, 0, 0), -1).tolist() == [[-1, -1, -1, 0, 1, 2], [0, 1, 2, 3, 4, 5]]
    # 2 x 2 tiles over a 2 x 3 grid: the second tile runs off the grid
    assert to_blocks(grid, (2, 2), (0, 0, 0, 0), -1).tolist() == [[0, 1, 3, 4], [2, -1, 5, -1]]
    # one cell of halo left and right around 1 x 1 tiles of the first row
    assert to_blocks(grid[:1], (1, 1), (0, 0, 1, 1), -1).tolist() == [[-1, 0, 1], [0, 1, 2], [1, 2, -1]]


@pytest.mark.parametrize(
    ("kind", "direction", "expected"),
    [
        ("row", "text_to_image", ((2, 6), (1, 0, 0, 0))),
        ("row", "image_to_text", ((2, 6), (1, 1, 0, 0))),
        ("column", "text_to_image", ((5, 2), (0, 0, 1, 1))),
        ("conv", "text_to_image", ((2, 2), (2, 0, 2, 2))),
        ("conv", "image_to_text", ((2, 2), (2, 2, 2, 2))),
    ],
)
def test_geometry_never_looks_below_a_causal_block(kind: str, direction: str, expected: tuple) -> None:
    layout = ImageTextLayout(3, (5, 6), direction)
    assert block_geometry(SparsePattern(kind, context=1, kernel_size=5), layout, 2) == expected


@pytest.mark.parametrize("kind", ["row", "column", "conv"])
@pytest.mark.parametrize("direction", ["text_to_image", "image_to_text"])
@pytest.mark.parametrize("block", [1, 2, 3])
def test_each_block_holds_all_keys_its_queries_may_see(kind: str, direction: str, block: int) -> None:
    """Per query, the allowed keys of its block are exactly the row of the dense mask."""
    pattern = SparsePattern(kind, context=1, kernel_size=3)
    plan = block_plan(2, (4, 5), direction, False, pattern, block, 3, torch.device("cpu"))
    dense = pattern_mask(kind, (4, 5), 2, direction, source_first=False, context=1, kernel_size=3)[0, 0]
    mask = padded(plan.rule, plan.itself, plan.key_index, None)[0]
    seen = torch.zeros_like(dense)
    for b in range(plan.query_index.shape[0]):
        for q in range(plan.query_index.shape[1]):
            if plan.query_real[b, q]:
                seen[plan.query_index[b, q], plan.key_index[b][mask[b, q]]] = True
    image = plan.image
    assert torch.equal(seen[image], dense[image])
    # the image order map sends every raster token to its own row of the block-major output
    order = plan.image_order if plan.image_order is not None else torch.arange(20)
    assert torch.equal(plan.query_index.flatten()[order], torch.arange(20) + image.start)


def test_padding_masks_keys_but_not_the_query_itself() -> None:
    rule = torch.tensor([[[True, True, False]]])
    itself = torch.tensor([[[False, True, False]]])
    key_mask = torch.tensor([[True, False, True]])
    out = padded(rule, itself, torch.tensor([[0, 1, 2]]), key_mask)
    assert out.tolist() == [[[[True, True, False]]]]  # key 1 is padded but it is the query itself


def test_chunks_partition_the_blocks_and_read_the_right_rows() -> None:
    plan = block_plan(
        3, (5, 5), "text_to_image", True, SparsePattern("conv", kernel_size=3), 2, 4, torch.device("cpu")
    )
    assert [chunk.blocks for chunk in plan.chunks] == [slice(0, 2), slice(2, 4), slice(4, 7), slice(7, 9)]
    for chunk in plan.chunks:
        queries, keys = plan.query_index[chunk.blocks].flatten(), plan.key_index[chunk.blocks].flatten()
        assert torch.equal(chunk.query_rows, 3 * queries) and torch.equal(chunk.output_rows, queries)
        assert torch.equal(chunk.key_rows, 3 * keys + 1) and torch.equal(chunk.value_rows, 3 * keys + 2)
        real = plan.query_real[chunk.blocks].flatten()
        assert (chunk.real is None) == bool(real.all())  # 2 x 2 tiles over 5 x 5 leave fill cells
    with pytest.raises(ValueError, match="chunks"):
        block_plan(3, (5, 5), "text_to_image", True, SparsePattern("row"), None, 0, torch.device("cpu"))
