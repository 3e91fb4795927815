"""What a scene of the broad world holds: more shapes, colours, sizes, fill styles, patterned
backgrounds, and up to three shapes (so captions can relate two of them).

It extends the proxy world's tables rather than replacing them, so the proxy world's words keep their
meaning here and a model pre-trained on this world can be measured on the proxy world's captions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dbprompt_lab.world import scene as proxy
from dbprompt_lab.world.outlines import OUTLINES as PROXY_OUTLINES, _regular
from dbprompt_lab.world.scene import pick

# Far enough from each other and from the proxy world's eight that the visual shift's jitter keeps them apart.
COLOURS: dict[str, tuple[int, int, int]] = proxy.COLOURS | {
    "magenta": (225, 30, 160),
    "navy": (20, 30, 120),
    "olive": (128, 128, 20),
    "teal": (0, 128, 128),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = proxy.BACKGROUNDS | {"beige": (215, 200, 160)}

SHAPES: tuple[str, ...] = proxy.SHAPES + ("hexagon", "pentagon", "arrow", "crescent")
SIZES: tuple[str, ...] = ("small", "medium", "large")
# How a shape is painted: all of it, its outline only, or its inside in stripes or dots (with the outline).
STYLES: tuple[str, ...] = ("filled", "outlined", "striped", "dotted")
# Background patterns of the source domain; the `texture` domain draws only the unseen ones.
PATTERNS: tuple[str, ...] = ("plain", "striped", "checkered")
UNSEEN_PATTERNS: tuple[str, ...] = ("rings", "speckled")
POSITIONS = proxy.POSITIONS


def _arrow() -> np.ndarray:
    return np.array([(0.0, -1.0), (0.75, -0.2), (0.3, -0.2), (0.3, 0.95), (-0.3, 0.95), (-0.3, -0.2), (-0.75, -0.2)])


def _crescent(n: int = 24) -> np.ndarray:
    """The outer arc of a unit circle and, back along it, the inner arc of a circle shifted right."""
    t = np.linspace(np.pi / 2 - 0.05, 3 * np.pi / 2 + 0.05, n)
    outer = np.stack([np.cos(t), np.sin(t)], axis=1)
    inner = np.stack([0.45 + 0.8 * np.cos(t[::-1]), 0.95 * np.sin(t[::-1])], axis=1)
    return np.concatenate([outer, inner])


OUTLINES: dict[str, np.ndarray] = PROXY_OUTLINES | {
    "hexagon": _regular(6, phase=0.0),
    "pentagon": _regular(5),
    "arrow": _arrow(),
    "crescent": _crescent(),
}
# Circumradius as a fraction of the image side: three sizes a 10 % jitter never confuses.
RADII: dict[str, float] = {"small": 0.075, "medium": 0.105, "large": 0.145}


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    position: str
    style: str


@dataclass(frozen=True)
class Scene:
    background: str
    pattern: str
    shapes: tuple[Shape, ...]


def sample_scene(rng: np.random.Generator, patterns: tuple[str, ...] = PATTERNS) -> Scene:
    """A patterned background and one to three shapes in distinct grid cells (two most often, for relations)."""
    positions = list(POSITIONS)
    count = 1 + int(rng.choice(3, p=[0.25, 0.45, 0.3]))
    cells = rng.permutation(len(positions))[:count]
    shapes = tuple(
        Shape(pick(rng, SHAPES), pick(rng, list(COLOURS)), pick(rng, SIZES), positions[cell], pick(rng, STYLES))
        for cell in cells
    )
    return Scene(pick(rng, list(BACKGROUNDS)), pick(rng, patterns), shapes)


def relations(a: Shape, b: Shape) -> list[str]:
    """The relations that hold from `a` to `b` on the grid: "left of", "right of", "above", "below"."""
    (ac, ar), (bc, br) = POSITIONS[a.position], POSITIONS[b.position]
    found = []
    if ac != bc:
        found.append("left of" if ac < bc else "right of")
    if ar != br:
        found.append("above" if ar < br else "below")
    return found
