"""How much the ERNIE-ViLG generated images draw: "ink" (bright pixels) per image in ``predict``'s PNG grids.

    python benchmarks/diagnostics/ernie_vilg_grid_stats.py PREDICT_DIR [PREDICT_DIR ...] [--real data/shapes64/test]

A pixel is ink when its brightest channel exceeds ``--threshold`` (0.5 of full scale; the shapes data's
backgrounds are dark, below ~0.25, and its objects bright). For each directory's grids
(``images_rank0_batch*.png``, a row per prompt, candidates best first, as ``ERNIEViLGTask.predict_step``
writes them with torchvision's ``save_image``: 2-pixel padding) it prints, for the best candidate and for
all candidates: the mean ink fraction and the share of images with less than ``--empty`` (0.5 %) ink
(an empty background). ``--real`` adds the same figures for the first as many real images of that split
(``*.png`` in its tar shards, in order): what a generator that draws like the data would show.
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

PAD = 2


def cells(grid_path: Path, size: int) -> list[list[np.ndarray]]:
    """The grid's images as ``[row][candidate]`` arrays ``[H, W, 3]`` in [0, 1]."""
    grid = np.asarray(Image.open(grid_path).convert("RGB"), dtype=np.float32) / 255.0
    step = size + PAD
    rows, cols = (grid.shape[0] - PAD) // step, (grid.shape[1] - PAD) // step
    if rows * step + PAD != grid.shape[0] or cols * step + PAD != grid.shape[1]:
        raise ValueError(
            f"{grid_path}: {grid.shape[:2]} is not a grid of {size} px images with {PAD} px padding"
        )
    return [
        [
            grid[PAD + r * step : PAD + r * step + size, PAD + c * step : PAD + c * step + size]
            for c in range(cols)
        ]
        for r in range(rows)
    ]


def ink(image: np.ndarray, threshold: float) -> float:
    return float((image.max(axis=-1) > threshold).mean())


def summary(fractions: list[float], empty: float) -> str:
    values = np.asarray(fractions)
    return f"ink {values.mean():.4f}, empty {(values < empty).mean():.3f} (n = {len(values)})"


def real_images(split_dir: Path, count: int) -> list[np.ndarray]:
    images: list[np.ndarray] = []
    for shard in sorted(split_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in sorted(
                (m for m in tar.getmembers() if m.name.endswith(".png")), key=lambda m: m.name
            ):
                data = tar.extractfile(member)
                if data is None:
                    raise ValueError(f"{shard}: {member.name} is not a file")
                image = Image.open(io.BytesIO(data.read())).convert("RGB")
                images.append(np.asarray(image, dtype=np.float32) / 255.0)
                if len(images) == count:
                    return images
    raise ValueError(f"{split_dir}: only {len(images)} images in its shards, {count} asked for")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--empty", type=float, default=0.005)
    parser.add_argument("--real", type=Path, help="a split directory of tar shards (e.g. data/shapes64/test)")
    args = parser.parse_args()
    count = 0
    for directory in args.dirs:
        grids = sorted(directory.glob("images_rank0_batch*.png"))
        if not grids:
            raise FileNotFoundError(f"{directory}: no images_rank0_batch*.png grids")
        best, every = [], []
        for grid in grids:
            for row in cells(grid, args.size):
                best.append(ink(row[0], args.threshold))
                every.extend(ink(image, args.threshold) for image in row)
        count = max(count, len(best))
        print(
            f"{directory}: best candidate {summary(best, args.empty)}; all candidates {summary(every, args.empty)}"
        )
    if args.real is not None:
        fractions = [ink(image, args.threshold) for image in real_images(args.real, count)]
        print(f"{args.real} (first {count} real images): {summary(fractions, args.empty)}")


if __name__ == "__main__":
    main()
