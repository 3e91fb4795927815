"""A tiny image-caption database for the product's tests: one coloured shape drawn with PIL, named by its captions.

The product tests itself without the lab (dbprompt_lab and its synthetic world): these images are
the tests' own. Each shows one shape whose colour, kind, size and place the captions name, on a
plain background they name too, so that prompts have something to learn. Deterministic under a
seed; the `textual` domain words every caption with synonyms only, so its captions never equal
a `source` one. The shard writers lay the same images out as img2dataset does.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (40, 70, 230), "yellow": (240, 210, 20),
           "purple": (150, 40, 190), "orange": (250, 140, 20)}
BACKGROUNDS = {"black": (10, 10, 10), "white": (250, 250, 250), "grey": (120, 120, 120)}
SHAPES = ("circle", "square", "triangle", "cross")
PLACES = {"on the left": (0.3, 0.5), "on the right": (0.7, 0.5), "at the top": (0.5, 0.3), "at the bottom": (0.5, 0.7),
          "in the center": (0.5, 0.5)}
# Shapes fill much of the image: a random-weight backbone's features then follow their colour, which
# the tests' few training steps can align with the colour word (smaller shapes learnt about half as much).
SIZES = {"small": 0.5, "large": 0.9}
SYNONYMS = {"red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden", "purple": "violet",
            "orange": "tangerine", "black": "ebony", "white": "ivory", "grey": "slate", "circle": "disc", "square": "box",
            "triangle": "wedge", "cross": "plus", "small": "tiny", "large": "huge", "on the left": "to the left",
            "on the right": "to the right", "at the top": "near the upper edge", "at the bottom": "down below",
            "in the center": "in the middle"}
# Colour and shape first and short captions: the loss of the tests' trainings falls about twice as
# fast as with "a picture of a small red circle ..." (their random text tower pools at the end).
TEMPLATES = {
    "source": ("{colour} {shape}, {size}, {place}", "{colour} {shape} on a {background} background", "{colour} {shape}"),
    "textual": ("{colour} {shape} set against {background}", "{colour} {shape}: {size}, seen {place}", "one {colour} {shape}"),
}


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rgb: tuple[int, int, int]) -> None:
    """A filled `shape` of radius `r` around (cx, cy): flat colour, so the colour word is what the pixels show."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=rgb)
    else:  # a cross: two bars a third as wide as long
        draw.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=rgb)
        draw.rectangle((cx - r / 3, cy - r, cx + r / 3, cy + r), fill=rgb)


def sample(index: int, *, domain: str = "source", seed: int = 0, image_size: int = 64,
           captions_per_image: int = 3) -> tuple[Image.Image, list[str]]:
    """Image `index` of the database `seed`: its own generator, so any image is made alone."""
    rng = np.random.default_rng([seed, index])
    words = {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES), "size": rng.choice(list(SIZES)),
             "place": rng.choice(list(PLACES)), "background": rng.choice(list(BACKGROUNDS))}
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[words["background"]])
    (x, y), jitter = PLACES[words["place"]], rng.uniform(-0.05, 0.05, 2)  # no two images are the same
    r = SIZES[words["size"]] * image_size / 2 * rng.uniform(0.9, 1.1)
    _draw(ImageDraw.Draw(image), words["shape"], (x + jitter[0]) * image_size, (y + jitter[1]) * image_size, r,
          COLOURS[words["colour"]])
    if domain == "textual":
        words = {k: SYNONYMS[v] for k, v in words.items()}
    elif domain != "source":
        raise ValueError(f"unknown domain {domain!r}: source or textual")
    templates = TEMPLATES[domain]
    return image, [templates[(index + k) % len(templates)].format(**words) for k in range(captions_per_image)]


def write_database(out_dir: str | os.PathLike, n_images: int, *, domain: str = "source", seed: int = 0,
                   image_size: int = 64, captions_per_image: int = 3) -> Path:
    """An imagefolder: `images/NNNNNN.png` and `metadata.jsonl` ({"file_name", "text": [captions]}); returns it."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n_images):
        image, captions = sample(index, domain=domain, seed=seed, image_size=image_size,
                                 captions_per_image=captions_per_image)
        image.save(out / "images" / f"{index:06d}.png")
        lines.append(json.dumps({"file_name": f"images/{index:06d}.png", "text": captions}) + "\n")
    (out / "metadata.jsonl").write_text("".join(lines))
    return out


def _samples(imagefolder: Path, per_shard: int) -> list[list[tuple[bytes, list[str]]]]:
    """(image bytes, captions) of each metadata line, in shards of `per_shard`."""
    rows = [json.loads(line) for line in (imagefolder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    items = [((imagefolder / r["file_name"]).read_bytes(), r["text"]) for r in rows]
    return [items[i : i + per_shard] for i in range(0, len(items), per_shard)]


def _key(shard: int, i: int) -> str:
    """img2dataset's key: the shard's number, then the sample's within it."""
    return f"{shard:05d}{i:04d}"


def write_webdataset(imagefolder: str | os.PathLike, out_dir: str | os.PathLike, per_shard: int = 100) -> Path:
    """`out_dir/00000.tar ...`: per sample KEY.png, KEY.txt (the first caption), KEY.json (all under "captions")."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for shard, chunk in enumerate(_samples(Path(imagefolder), per_shard)):
        with tarfile.open(out / f"{shard:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for i, (image, captions) in enumerate(chunk):
                meta = {"key": _key(shard, i), "caption": captions[0], "captions": captions, "status": "success"}
                for ext, data in (("png", image), ("txt", captions[0].encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{_key(shard, i)}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
    return out


def write_parquet(imagefolder: str | os.PathLike, out_dir: str | os.PathLike, per_file: int = 100,
                  row_group: int = 25) -> Path:
    """`out_dir/00000.parquet ...` with img2dataset's columns key, jpg (PNG bytes: img2dataset's name whatever the
    encoding), caption (every caption, as a list), status."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for shard, chunk in enumerate(_samples(Path(imagefolder), per_file)):
        table = pa.table({"key": [_key(shard, i) for i in range(len(chunk))],
                          "jpg": pa.array([image for image, _ in chunk], pa.binary()),
                          "caption": [captions for _, captions in chunk], "status": ["success"] * len(chunk)})
        pq.write_table(table, out / f"{shard:05d}.parquet", row_group_size=row_group)
    return out
