"""Textured, noisy backgrounds for the visual domain shift.

Each image gets one of a few texture families so the shift is not a single
fixed pattern a model could learn to ignore. Textures are built from 1-D
profiles broadcast to 2-D, which keeps them cheap enough for thousands of
images a second.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _axes(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Projections of pixel columns and rows on the direction `angle`, shaped to broadcast."""
    t = np.arange(size, dtype=np.float32) / size
    return (t * np.cos(angle))[None, :], (t * np.sin(angle))[:, None]


def _gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    across, down = _axes(size, rng.uniform(0, 2 * np.pi))
    ramp = across + down
    return ((ramp - ramp.mean()) * rng.uniform(40, 90))[..., None]


def _stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    across, down = _axes(size, rng.uniform(0, np.pi))
    cycles, phase = rng.uniform(3, 8), rng.uniform(0, 2 * np.pi)
    # sin(a + b) = sin a cos b + cos a sin b: four 1-D sines instead of one 2-D one.
    a, b = 2 * np.pi * cycles * across + phase, 2 * np.pi * cycles * down
    wave = np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b)
    return (wave * rng.uniform(12, 30))[..., None]


def _blotches(size: int, rng: np.random.Generator) -> np.ndarray:
    # Mostly brightness, a little hue: a colourful blotch must not pass for a shape's colour.
    shade = 30 * rng.standard_normal((4, 4, 1)) + 8 * rng.standard_normal((4, 4, 3))
    coarse = np.clip(128 + shade, 0, 255).astype(np.uint8)
    smooth = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(smooth, dtype=np.int16) - 128


_TEXTURES = (_gradient, _stripes, _blotches)


def textured_background(rgb: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """`rgb`, colour-jittered, plus a random texture and per-pixel grain, as uint8 (size, size, 3)."""
    base = np.asarray(rgb, dtype=np.int16) + rng.integers(-15, 16, 3, dtype=np.int16)
    texture = _TEXTURES[int(rng.integers(len(_TEXTURES)))](size, rng).astype(np.int16)
    # Uniform rather than Gaussian grain: several times cheaper, and just as noisy to a model.
    grain = rng.integers(-16, 17, (size, size, 3), dtype=np.int16)
    return np.clip(grain + texture + base, 0, 255).astype(np.uint8)
