"""Writing the synthetic database as a Hugging Face imagefolder."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from dbprompt.atomic import atomic_write_text
from dbprompt.world.png import encode_png
from dbprompt.world.samples import check_arguments, sample

METADATA = "metadata.jsonl"
IMAGES = "images"
_IMAGE_NAME = re.compile(r"\d+\.png")


def write_database(
    out_dir: str | os.PathLike,
    n_images: int,
    *,
    domain: str = "source",
    seed: int = 0,
    image_size: int = 64,
    captions_per_image: int = 3,
) -> Path:
    """Write `images/NNNNNN.png` and `metadata.jsonl`; return `out_dir`.

    The old metadata goes first and the new one is written atomically last, so an
    interrupted run leaves no metadata at all rather than one that names missing
    or half-rewritten images. Leftover images of an earlier, larger run are
    removed, since an imagefolder lists every image in the folder.
    """
    if n_images < 0:
        raise ValueError(f"n_images must be non-negative, got {n_images}")
    check_arguments(domain, image_size, captions_per_image)
    out = Path(out_dir)
    images = out / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    (out / METADATA).unlink(missing_ok=True)
    width = max(6, len(str(n_images - 1)))
    names, lines = set(), []
    for index in range(n_images):
        s = sample(index, domain=domain, seed=seed, image_size=image_size, captions_per_image=captions_per_image)
        name = f"{index:0{width}d}.png"
        (images / name).write_bytes(encode_png(s.image))
        names.add(name)
        lines.append(json.dumps({"file_name": f"{IMAGES}/{name}", "text": s.captions}) + "\n")
    for stale in images.iterdir():
        if _IMAGE_NAME.fullmatch(stale.name) and stale.name not in names:
            stale.unlink()
    atomic_write_text(out / METADATA, "".join(lines))
    return out
