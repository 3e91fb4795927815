"""Drawing a broad-world scene: patterned backgrounds, shapes filled, outlined, striped or dotted.

Visual domains: "none" (the source), "noise" (the proxy world's visual shift: noisy textured backgrounds,
rotation, colour jitter, blur) and "texture" (background patterns the source never shows).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dbprompt_lab.world.backgrounds import textured_background
from dbprompt_lab.world.broad.scene import BACKGROUNDS, COLOURS, OUTLINES, RADII, Scene, Shape
from dbprompt_lab.world.render import fill_colour, polygon

VISUAL = ("none", "noise", "texture")
# A pattern's second shade: this much lighter on a dark background, darker on a light one.
_SHADE = 40


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(size)[None, :], np.arange(size)[:, None]


def _pattern_mask(pattern: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Where a background's second shade goes, as bool (size, size)."""
    x, y = _grid(size)
    if pattern == "plain":
        return np.zeros((size, size), dtype=bool)
    if pattern == "striped":
        period = max(4, size // int(rng.integers(6, 11)))
        along = x if rng.random() < 0.5 else y
        return np.broadcast_to((along // (period // 2)) % 2 == 0, (size, size))
    if pattern == "checkered":
        cell = max(3, size // int(rng.integers(5, 9)))
        return (x // cell + y // cell) % 2 == 0
    if pattern == "rings":
        cx, cy = rng.uniform(0, size, 2)
        return np.sin(np.hypot(x - cx, y - cy) * rng.uniform(0.5, 0.9)) > 0
    if pattern == "speckled":
        return rng.random((size, size)) < 0.08
    raise ValueError(f"unknown background pattern {pattern!r}")


def _background(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    rgb = np.asarray(BACKGROUNDS[scene.background], dtype=np.int16)
    shade = rgb + (_SHADE if rgb.mean() < 128 else -_SHADE)
    canvas = np.empty((size, size, 3), dtype=np.int16)
    canvas[:] = rgb
    canvas[_pattern_mask(scene.pattern, size, rng)] = shade
    return canvas


def _style_mask(style: str, inside: np.ndarray, edge: np.ndarray, size: int) -> np.ndarray:
    """The pixels a shape of this style paints, from its inside and its outline."""
    if style == "filled":
        return inside | edge
    if style == "outlined":
        return edge
    x, y = _grid(size)
    step = max(4, size // 16)
    if style == "striped":
        return (inside & (((x + y) // (step // 2)) % 2 == 0)) | edge
    if style == "dotted":
        dots = (x % step - step / 2) ** 2 + (y % step - step / 2) ** 2 <= (step / 3.5) ** 2
        return (inside & dots) | edge
    raise ValueError(f"unknown shape style {style!r}")


def _paint(canvas: np.ndarray, shape: Shape, rng: np.random.Generator, size: int, rotate: bool, jitter: bool) -> None:
    points = polygon(shape, rng, size, rotate, outlines=OUTLINES, radii=RADII)
    inside, edge = Image.new("L", (size, size)), Image.new("L", (size, size))
    ImageDraw.Draw(inside).polygon(points, fill=255)
    ImageDraw.Draw(edge).polygon(points, outline=255, width=max(1, size // 40))
    mask = _style_mask(shape.style, np.asarray(inside) > 0, np.asarray(edge) > 0, size)
    canvas[mask] = fill_colour(COLOURS[shape.colour], rng, jitter)


def render(scene: Scene, rng: np.random.Generator, *, size: int, visual: str) -> np.ndarray:
    """The scene as uint8 (size, size, 3) in one of the `VISUAL` domains."""
    if visual not in VISUAL:
        raise ValueError(f"unknown visual domain {visual!r}; choose one of {', '.join(VISUAL)}")
    noisy = visual == "noise"
    if noisy:
        canvas = textured_background(BACKGROUNDS[scene.background], size, rng).astype(np.int16)
    else:
        canvas = _background(scene, size, rng)
    for shape in scene.shapes:
        _paint(canvas, shape, rng, size, rotate=noisy, jitter=noisy)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if noisy:
        image = image.filter(ImageFilter.BoxBlur(rng.uniform(0.3, 0.9) * size / 64))
    return np.array(image)
