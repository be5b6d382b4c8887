"""Shape glyphs: the boolean pixel mask of each shape at each size, style and resolution.

Scene sampling places objects by the size of their glyph (so boxes are the tight boxes of the drawn
pixels) and rendering stamps the same glyph in the object's colour.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["LARGE_RATIO", "SMALL_FRACTION", "STAR_INNER_RADIUS", "object_side", "outline_width"]

SMALL_FRACTION = 0.18  # side of a small object / image side: 12 px at 64 px
LARGE_RATIO = 1.8
STAR_INNER_RADIUS = 0.45  # fatter than a geometric star so that small stars stay recognisable


def object_side(size: str, resolution: int) -> int:
    """Side of the square an object of ``size`` is drawn in, proportional to the image side."""
    small = max(4, round(resolution * SMALL_FRACTION))
    return small if size == "small" else round(small * LARGE_RATIO)


def outline_width(resolution: int) -> int:
    """Stroke of outlined shapes: 2 px at 64 px, growing linearly with the resolution."""
    return max(1, round(resolution / 32))


def _line_width(style: str, resolution: int) -> int:
    return outline_width(resolution) if style == "outlined" else 1


def _normalise(points: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Stretch a polygon so that it spans exactly [0, 1] along both axes (every shape fills its square)."""
    xs, ys = zip(*points)
    x0, y0, dx, dy = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return tuple(((x - x0) / dx, (y - y0) / dy) for x, y in points)


def _polar(angle_degrees: float, radius: float) -> tuple[float, float]:
    angle = math.radians(angle_degrees)
    return (radius * math.cos(angle), radius * math.sin(angle))


@functools.cache
def _unit_vertices(shape: str) -> tuple[tuple[float, float], ...]:
    if shape == "square":
        points = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "triangle":
        points = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "diamond":
        points = [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    elif shape == "star":
        points = [_polar(-90 + 36 * k, 1.0 if k % 2 == 0 else STAR_INNER_RADIUS) for k in range(10)]
    elif shape == "hexagon":
        points = [_polar(60 * k, 1.0) for k in range(6)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    return _normalise(points)


@functools.cache
def _glyph(shape: str, side: int, style: str, width: int) -> np.ndarray:
    """Read-only boolean mask of a shape drawn in a ``side`` square, cropped to its drawn pixels.

    Cropping makes object boxes tight whatever PIL's rasterisation does at the edges. There are only a few
    dozen distinct glyphs per resolution, so they are drawn once and cached.
    """
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    fill = 255 if style == "filled" else None
    if shape == "circle":
        draw.ellipse((0, 0, side - 1, side - 1), fill=fill, outline=255, width=width)
    else:
        points = [(u * (side - 1), v * (side - 1)) for u, v in _unit_vertices(shape)]
        draw.polygon(points, fill=fill, outline=255, width=width)
    mask = np.asarray(canvas) > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    cropped = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
    cropped.setflags(write=False)
    return cropped


def _object_glyph(shape: str, size: str, style: str, resolution: int) -> np.ndarray:
    return _glyph(shape, object_side(size, resolution), style, _line_width(style, resolution))
