"""Writing the synthetic database as a Hugging Face imagefolder."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dbprompt.atomic import atomic_write_text
from dbprompt_lab.world.png import encode_png
from dbprompt_lab.world.samples import check_arguments, sample

METADATA = "metadata.jsonl"
IMAGES = "images"
_IMAGE_NAME = re.compile(r"\d+\.png")
# Below this many images per worker, starting processes costs more than it saves.
_MIN_CHUNK = 500


def write_database(
    out_dir: str | os.PathLike,
    n_images: int,
    *,
    domain: str = "source",
    seed: int = 0,
    image_size: int = 64,
    captions_per_image: int = 3,
    workers: int | None = None,
    world: str = "proxy",
    twins: bool = False,
) -> Path:
    """Write `images/NNNNNN.png` and `metadata.jsonl`; return `out_dir`.

    The old metadata goes first and the new one is written atomically last, so an
    interrupted run leaves no metadata at all rather than one that names missing
    or half-rewritten images. Leftover images of an earlier, larger run are
    removed, since an imagefolder lists every image in the folder. `twins`: see `samples.sample`.
    """
    if n_images < 0:
        raise ValueError(f"n_images must be non-negative, got {n_images}")
    check_arguments(domain, image_size, captions_per_image, world)
    if twins and n_images % 2:
        raise ValueError(f"shape twins come in pairs: got {n_images} images")
    out = Path(out_dir)
    images = out / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    (out / METADATA).unlink(missing_ok=True)
    width = max(6, len(str(n_images - 1)))
    workers = max(1, min(workers or (os.cpu_count() or 1), n_images // _MIN_CHUNK))
    bounds = [n_images * w // workers for w in range(workers + 1)]
    jobs = [(images, range(a, b), domain, seed, image_size, captions_per_image, width, world, twins) for a, b in zip(bounds, bounds[1:])]
    if workers == 1:
        chunks = [_write_images(*jobs[0])]
    else:
        # Images are independent (each has its own generator), so processes split the work.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            chunks = list(pool.map(_write_images, *zip(*jobs)))
    written = [item for chunk in chunks for item in chunk]
    names = {name for name, _ in written}
    for stale in images.iterdir():
        if _IMAGE_NAME.fullmatch(stale.name) and stale.name not in names:
            stale.unlink()
    atomic_write_text(out / METADATA, "".join(line for _, line in written))
    return out


def _write_images(
    images: Path, indices: range, domain: str, seed: int, image_size: int, captions_per_image: int, width: int, world: str,
    twins: bool,
) -> list[tuple[str, str]]:
    """(file name, metadata line) of each image written."""
    written = []
    for index in indices:
        s = sample(index, domain=domain, seed=seed, image_size=image_size, captions_per_image=captions_per_image, world=world, twins=twins)
        name = f"{index:0{width}d}.png"
        (images / name).write_bytes(encode_png(s.image))
        written.append((name, json.dumps({"file_name": f"{IMAGES}/{name}", "text": s.captions}) + "\n"))
    return written
