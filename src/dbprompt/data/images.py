"""Image decoding: the eager check at load time and the RGB opener used by training and indexing."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from PIL import Image, UnidentifiedImageError

from .errors import (
    EMPTY_FILE,
    MISSING_IMAGE,
    NOT_AN_IMAGE,
    TRUNCATED_IMAGE,
    UNREADABLE_FILE,
    DataError,
)

_CHUNK = 1024


def _open(path: Path) -> Image.Image:
    """Open lazily, classifying the failures that happen before any pixel is decoded."""
    if not path.is_file():
        raise DataError(str(path), MISSING_IMAGE)
    try:
        if path.stat().st_size == 0:
            raise DataError(str(path), EMPTY_FILE)
        return Image.open(path)
    except UnidentifiedImageError as e:
        raise DataError(str(path), NOT_AN_IMAGE, str(e)) from e
    except OSError as e:  # errno set: the OS failed; unset: PIL ran out of data in the header
        raise DataError(str(path), UNREADABLE_FILE if e.errno else TRUNCATED_IMAGE, str(e)) from e


def check_image(path: Path) -> None:
    """Fully decode `path` or raise DataError; `verify()` alone misses truncated pixel data."""
    with _open(path) as im:
        try:
            # JPEG decodes at 1/8 scale: cheaper, yet the whole stream is still read.
            im.draft(None, (1, 1))
            im.load()
        except Exception as e:  # PIL raises many types for corrupt data
            raise DataError(str(path), TRUNCATED_IMAGE, str(e) or type(e).__name__) from e


def check_images(paths: Iterable[Path]) -> dict[Path, DataError | None]:
    """Check many images in threads (PIL releases the GIL while decoding)."""
    def one(path: Path) -> DataError | None:
        try:
            check_image(path)
        except DataError as e:
            return e
        return None

    unique = list(dict.fromkeys(paths))
    results: dict[Path, DataError | None] = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        # In chunks: pool.map makes a future per item up front, too many for millions of images.
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            results.update(zip(chunk, pool.map(one, chunk)))
    return results


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode `path` to RGB, raising DataError naming the path when it cannot be read."""
    with _open(Path(path)) as im:
        try:
            return im.convert("RGB")
        except Exception as e:  # PIL raises many types for corrupt data
            raise DataError(str(path), TRUNCATED_IMAGE, str(e) or type(e).__name__) from e
