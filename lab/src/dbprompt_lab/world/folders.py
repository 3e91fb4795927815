"""A collection sorted into class folders, with no captions: the proxy world's shapes, one class a folder.

What most people's archives look like (issue 25): `OUT/<class>/NNNN.png`, a main shape of the
folder's class in a random colour, size, place and background, and in `other_rate` of the images a
small shape of another class beside it. Read with `--caption-template "a photo of a {}"`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dbprompt_lab.world.png import encode_png
from dbprompt_lab.world.render import render
from dbprompt_lab.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, Shape, pick


def class_scene(kind: str, rng: np.random.Generator, other_rate: float) -> Scene:
    """A scene whose main shape is `kind`; sometimes a small shape of another class in another cell."""
    cells = [list(POSITIONS)[i] for i in rng.permutation(len(POSITIONS))[:2]]
    shapes = [Shape(kind, pick(rng, list(COLOURS)), pick(rng, SIZES), cells[0])]
    if rng.random() < other_rate:
        other = pick(rng, [s for s in SHAPES if s != kind])
        shapes.append(Shape(other, pick(rng, list(COLOURS)), "small", cells[1]))
    return Scene(pick(rng, list(BACKGROUNDS)), tuple(shapes))


def write_class_folders(
    out_dir: str | os.PathLike,
    per_class: int,
    *,
    classes: tuple[str, ...] = SHAPES[:6],
    seed: int = 0,
    shifted: bool = False,
    other_rate: float = 0.3,
    image_size: int = 64,
) -> Path:
    """Write `per_class` images into one folder per class; returns `out_dir`. Deterministic in `seed`."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    unknown = sorted(set(classes) - set(SHAPES))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; the world's shapes are {list(SHAPES)}")
    out = Path(out_dir)
    for c, kind in enumerate(classes):
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            image = render(class_scene(kind, rng, other_rate), rng, size=image_size, shifted=shifted)
            (folder / f"{i:04d}.png").write_bytes(encode_png(image))
    return out


def class_folders_once(root: str | os.PathLike, per_class: int, *, seed: int, shifted: bool) -> Path:
    """The collection of these settings under `root`, written the first time only (aside, then renamed
    into place, so an interrupted run leaves nothing a later one would take for complete)."""
    out = Path(root) / f"{'shifted' if shifted else 'source'}-{per_class}-seed{seed}"
    if not out.exists():
        write_class_folders(out.with_suffix(".tmp"), per_class, seed=seed, shifted=shifted).rename(out)
    return out
