"""Drawing a scene as an RGB image, with or without the visual domain shift."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dbprompt_lab.world.backgrounds import textured_background
from dbprompt_lab.world.outlines import OUTLINES
from dbprompt_lab.world.scene import BACKGROUNDS, COLOURS, POSITIONS, Scene, Shape

# Circumradius as a fraction of the image side; a large shape still fits its grid cell.
_RADIUS: dict[str, float] = {"small": 0.085, "large": 0.14}
_SCALE_JITTER = 0.1
_CENTRE_JITTER = 0.01
_COLOUR_JITTER = 25


def cell_centre(position: str) -> tuple[float, float]:
    """Centre of a position's grid cell, as fractions of the image side (x, y)."""
    column, row = POSITIONS[position]
    return (column + 0.5) / 3, (row + 0.5) / 3


def polygon(
    shape: Shape, rng: np.random.Generator, size: int, rotate: bool, *, outlines=OUTLINES, radii=_RADIUS
) -> list[float]:
    """The shape's outline in pixels, flattened (x0, y0, x1, ...); `outlines` and `radii` by kind and size
    name (the broad world has more of both)."""
    outline = outlines[shape.kind]
    if rotate:
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        outline = outline @ np.array([[c, s], [-s, c]])
    radius = radii[shape.size] * rng.uniform(1 - _SCALE_JITTER, 1 + _SCALE_JITTER)
    centre = np.asarray(cell_centre(shape.position)) + rng.uniform(-_CENTRE_JITTER, _CENTRE_JITTER, 2)
    return ((outline * radius + centre) * size).ravel().tolist()


def fill_colour(rgb: tuple[int, int, int], rng: np.random.Generator, jitter: bool) -> tuple[int, ...]:
    """`rgb`, with the visual shift's colour jitter when `jitter`."""
    rgb = np.asarray(rgb)
    if jitter:
        rgb = np.clip(rgb + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3), 0, 255)
    return tuple(int(v) for v in rgb)


def render(scene: Scene, rng: np.random.Generator, *, size: int, shifted: bool) -> np.ndarray:
    """The scene as uint8 (size, size, 3).

    `shifted` applies the visual domain shift: textured background, rotated
    shapes, colour jitter and blur; without it backgrounds are flat.
    """
    background = BACKGROUNDS[scene.background]
    if shifted:
        canvas = Image.fromarray(textured_background(background, size, rng))
    else:
        canvas = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(canvas)
    for shape in scene.shapes:
        draw.polygon(polygon(shape, rng, size, rotate=shifted), fill=fill_colour(COLOURS[shape.colour], rng, jitter=shifted))
    if shifted:
        # A box blur looks the same at this radius and costs a third of a Gaussian one.
        canvas = canvas.filter(ImageFilter.BoxBlur(rng.uniform(0.3, 0.9) * size / 64))
    return np.array(canvas)
