"""Unit outlines of the shape kinds: polygons centred on 0, inside the unit circle, y pointing down."""

from __future__ import annotations

import numpy as np


def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular(points)
    valleys = _regular(points, inner, -np.pi / 2 + np.pi / points)
    return np.stack([outer, valleys], axis=1).reshape(-1, 2)


def _cross(arm: float = 0.3, reach: float = 0.95) -> np.ndarray:
    a, r = arm, reach
    return np.array(
        [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a),
         (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    )


def _heart(n: int = 48) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(axis=0) + pts.min(axis=0)) / 2
    return pts / np.linalg.norm(pts, axis=1).max()


OUTLINES: dict[str, np.ndarray] = {
    "circle": _regular(40),
    "square": _regular(4, 1.1, np.pi / 4),
    "triangle": _regular(3),
    "star": _star(),
    "cross": _cross(),
    "diamond": _regular(4) * np.array([0.7, 1.0]),
    "heart": _heart(),
}
