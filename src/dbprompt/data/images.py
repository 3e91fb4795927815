"""Image decoding: the one RGB opener used by training, evaluation, indexing and search."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import EMPTY_FILE, MISSING_IMAGE, NOT_AN_IMAGE, TRUNCATED_IMAGE, UNREADABLE_FILE, DataError


def stat_problem(path: Path) -> tuple[str, str] | None:
    """What makes `path` unusable without opening it (missing, not a file, empty), or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return MISSING_IMAGE, ""
    except OSError as e:
        return UNREADABLE_FILE, str(e)
    if not path.is_file():
        return MISSING_IMAGE, "not a regular file"
    if st.st_size == 0:
        return EMPTY_FILE, ""
    return None


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode `path` fully to RGB, raising DataError naming the path when it cannot be read.

    A full decode (not `verify()`) is what catches truncated pixel data.
    """
    path = Path(path)
    problem = stat_problem(path)
    if problem is not None:
        raise DataError(str(path), *problem)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except UnidentifiedImageError as e:
        raise DataError(str(path), NOT_AN_IMAGE, str(e)) from e
    except OSError as e:  # errno set: the OS failed; unset: PIL ran out of data
        raise DataError(str(path), UNREADABLE_FILE if e.errno else TRUNCATED_IMAGE, str(e)) from e
    except Exception as e:  # PIL raises many types for corrupt data
        raise DataError(str(path), TRUNCATED_IMAGE, str(e) or type(e).__name__) from e
