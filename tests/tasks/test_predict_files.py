"""The prediction grids: each row's images where they belong (the label's text left of them in the labelled
one), and a row of a plain grid read back as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlp.tasks.predict_files import read_png_row, write_labelled_png, write_png


def test_labelled_grid_places_each_image_beside_its_label(tmp_path: Path) -> None:
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    images = colours[:, None, :, None, None].expand(3, 2, 3, 8, 8).clone()  # row r: two tiles of colour r
    images[:, 1] *= 0.5
    path = write_labelled_png(tmp_path / "grid.png", images, ["a red one", "green", ""], label_width=60)
    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert grid.shape == (3 * 10, 60 + 2 * 10, 3)  # 2-px gaps after each row and tile
    for row in range(3):
        for column in range(2):
            top, left = row * 10, 60 + column * 10
            expected = (images[row, column, :, 0, 0] * 255).round().int().tolist()
            assert (grid[top : top + 8, left : left + 8] == expected).all(), (row, column)
    panel = grid[:, :60]
    assert (panel[:10] < 128).any() and (panel[10:20] < 128).any()  # text drawn in the two labelled rows
    assert (panel[20:] == 255).all()  # the empty label leaves its panel white
    with pytest.raises(FileExistsError):
        write_labelled_png(path, images, ["x", "y", "z"])  # never written over
    with pytest.raises(ValueError, match="R = 2 labels"):
        write_labelled_png(tmp_path / "other.png", images, ["x", "y"])


def test_a_grid_row_reads_back_the_images_written(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images = (torch.rand(3, 4, 3, 6, 5) * 255).round() / 255  # 8-bit values: the PNG keeps them exactly
    path = write_png(tmp_path / "grid.png", images.flatten(0, 1), nrow=4)
    for row in range(3):
        assert torch.equal(read_png_row(path, row, 4, (6, 5)), images[row])
    assert torch.equal(read_png_row(path, 1, 2, (6, 5)), images[1, :2])
    with pytest.raises(ValueError, match="holds no row 3 of 4 images of 6x5"):
        read_png_row(path, 3, 4, (6, 5))
