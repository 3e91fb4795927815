"""A collection sorted into class folders, with no captions: a world's shapes, one class a folder.

What most people's archives look like (issue 25): `OUT/<class>/NNNN.png`, a main shape of the
folder's class in a random colour, size, place and background, and in `other_rate` of the images a
small shape of another class beside it. Read with `--caption-template "a photo of a {}"`. In the proxy
world's look (the first proxy's), or in the broad world's (`world="broad"`, the second proxy's): its
colours, three sizes, fill styles and patterned backgrounds, drawn by its renderer.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from dbprompt_lab.world import broad
from dbprompt_lab.world.broad import scene as broad_scene
from dbprompt_lab.world.png import encode_png
from dbprompt_lab.world.render import render
from dbprompt_lab.world.samples import WORLDS
from dbprompt_lab.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, Shape, pick

# The classes of the benchmarks' collections: shapes both worlds know.
CLASSES = SHAPES[:6]
# The broad world's images draw from generators of their own, never the proxy world's (same seed, other images).
_BROAD_KEY = zlib.crc32(b"broad:folders")


def class_scene(kind: str, rng: np.random.Generator, other_rate: float) -> Scene:
    """A scene whose main shape is `kind`; sometimes a small shape of another class in another cell."""
    cells = [list(POSITIONS)[i] for i in rng.permutation(len(POSITIONS))[:2]]
    shapes = [Shape(kind, pick(rng, list(COLOURS)), pick(rng, SIZES), cells[0])]
    if rng.random() < other_rate:
        other = pick(rng, [s for s in SHAPES if s != kind])
        shapes.append(Shape(other, pick(rng, list(COLOURS)), "small", cells[1]))
    return Scene(pick(rng, list(BACKGROUNDS)), tuple(shapes))


def broad_class_scene(kind: str, rng: np.random.Generator, other_rate: float, patterns: tuple[str, ...]) -> broad.Scene:
    """The broad world's `class_scene`: each shape also in a random fill style, the background in one of `patterns`."""
    cells = [list(broad_scene.POSITIONS)[i] for i in rng.permutation(len(broad_scene.POSITIONS))[:2]]
    colours, styles = list(broad_scene.COLOURS), broad_scene.STYLES
    shapes = [broad_scene.Shape(kind, pick(rng, colours), pick(rng, broad_scene.SIZES), cells[0], pick(rng, styles))]
    if rng.random() < other_rate:
        other = pick(rng, [s for s in broad_scene.SHAPES if s != kind])
        shapes.append(broad_scene.Shape(other, pick(rng, colours), "small", cells[1], pick(rng, styles)))
    return broad.Scene(pick(rng, list(broad_scene.BACKGROUNDS)), pick(rng, patterns), tuple(shapes))


def _class_image(world: str, kind: str, c: int, i: int, seed: int, shifted: bool, other_rate: float, size: int) -> np.ndarray:
    """Image `i` of class number `c`; shifted: the visual shift of the world (the broad world's `visual` domain)."""
    if world == "broad":
        rng = np.random.default_rng([seed, _BROAD_KEY, c, i])
        domain = broad.DOMAINS["visual" if shifted else "source"]
        return broad.render(broad_class_scene(kind, rng, other_rate, domain.patterns), rng, size=size, visual=domain.visual)
    rng = np.random.default_rng([seed, c, i])
    return render(class_scene(kind, rng, other_rate), rng, size=size, shifted=shifted)


def write_class_folders(
    out_dir: str | os.PathLike,
    per_class: int,
    *,
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
    shifted: bool = False,
    other_rate: float = 0.3,
    image_size: int = 64,
    world: str = "proxy",
) -> Path:
    """Write `per_class` images into one folder per class; returns `out_dir`. Deterministic in `seed`."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; choose one of {', '.join(WORLDS)}")
    known = broad_scene.SHAPES if world == "broad" else SHAPES
    unknown = sorted(set(classes) - set(known))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; the {world} world's shapes are {list(known)}")
    out = Path(out_dir)
    for c, kind in enumerate(classes):
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = _class_image(world, kind, c, i, seed, shifted, other_rate, image_size)
            (folder / f"{i:04d}.png").write_bytes(encode_png(image))
    return out


def class_folders_once(
    root: str | os.PathLike, per_class: int, *, seed: int, shifted: bool, world: str = "proxy", image_size: int = 64
) -> Path:
    """The collection of these settings under `root`, written the first time only (aside, then renamed
    into place, so an interrupted run leaves nothing a later one would take for complete). The proxy
    world's keep their first names; another world's are named by it and their size (`broad-96px-source-60-seed0`)."""
    name = f"{'shifted' if shifted else 'source'}-{per_class}-seed{seed}"
    out = Path(root) / (name if world == "proxy" else f"{world}-{image_size}px-{name}")
    if not out.exists():
        write_class_folders(out.with_suffix(".tmp"), per_class, seed=seed, shifted=shifted, world=world, image_size=image_size).rename(out)
    return out
