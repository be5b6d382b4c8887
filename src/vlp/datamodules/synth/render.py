"""Rendering: a sampled scene drawn to pixels."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vlp.datamodules.synth.glyphs import _object_glyph
from vlp.datamodules.synth.scenes import COLOURS, Background, Scene

__all__ = ["render_scene"]


def _background_pixels(background: Background, resolution: int, rng: np.random.Generator) -> np.ndarray:
    pixels = np.empty((resolution, resolution, 3), dtype=np.int16)
    pixels[:] = background.colour
    if background.texture:
        amplitude = background.texture
        pixels += rng.integers(-amplitude, amplitude + 1, size=(resolution, resolution, 1), dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def render_scene(scene: Scene, resolution: int, rng: np.random.Generator) -> Image.Image:
    """Draw a scene; ``rng`` only feeds the background texture."""
    pixels = _background_pixels(scene.background, resolution, rng)
    for obj in scene.objects:
        x, y, w, h = (int(value) for value in obj.box)
        glyph = _object_glyph(obj.shape, obj.size, obj.style, resolution)
        if glyph.shape != (h, w) or x < 0 or y < 0 or x + w > resolution or y + h > resolution:
            raise ValueError(f"{obj} was not sampled for a {resolution} px image")
        pixels[y : y + h, x : x + w][glyph] = COLOURS[obj.colour]
    return Image.fromarray(pixels)
