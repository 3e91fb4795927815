"""What a synthetic scene holds, and how one is drawn at random.

Scenes are symbolic (names, not pixels) so that captions and images are both
derived from the same ground truth and can never disagree.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")
S = TypeVar("S")

# Shape colours, far apart in RGB so that colour jitter never turns one into another.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 165, 60),
    "cyan": (40, 205, 215),
    "blue": (40, 70, 225),
    "purple": (140, 45, 190),
    "pink": (250, 125, 195),
}

# Backgrounds use their own names so a caption's background word never names a shape.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "black": (25, 25, 25),
    "white": (235, 235, 235),
    "brown": (110, 72, 40),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "heart")

SIZES: tuple[str, ...] = ("small", "large")

# (column, row) on a 3x3 grid; two shapes never share a cell, so unrotated shapes never overlap.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One element of `options`, uniformly; cheaper than `rng.choice` on small tuples."""
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator) -> Scene:
    """A background and one or two shapes in distinct grid cells."""
    positions = list(POSITIONS)
    cells = rng.permutation(len(positions))[: int(rng.integers(1, 3))]
    shapes = tuple(
        Shape(
            kind=pick(rng, SHAPES),
            colour=pick(rng, list(COLOURS)),
            size=pick(rng, SIZES),
            position=positions[cell],
        )
        for cell in cells
    )
    return Scene(background=pick(rng, list(BACKGROUNDS)), shapes=shapes)


# Keys twin pairs' generators apart from the plain samples' (pair p is not image p of the same seed).
_TWINS = zlib.crc32(b"twins")


def twin_key(index: int, twins: bool) -> tuple[int, tuple[int, ...]]:
    """(member, generator key) of sample `index`: twins 2p and 2p+1 are members 0 and 1 of pair p and share its
    generator; a plain sample is member 0 of its own."""
    if not twins:
        return 0, (index,)
    pair, member = divmod(index, 2)
    return member, (pair, _TWINS)


def twin(scene: S, rng: np.random.Generator, member: int, kinds: Sequence[str] = SHAPES) -> S:
    """Member 0 of a twin pair: the scene (either world's); member 1: the scene with one of its shapes (drawn) of
    another of `kinds` (drawn), all else as it was, so that only that shape tells the two apart. Both members
    draw alike, so what the generator draws next (rendering, wording) is alike too."""
    j = int(rng.integers(len(scene.shapes)))
    kind = pick(rng, [k for k in kinds if k != scene.shapes[j].kind])
    if not member:
        return scene
    return replace(scene, shapes=tuple(replace(s, kind=kind) if i == j else s for i, s in enumerate(scene.shapes)))
