"""Image files: confined to their database, bounded in pixels, decoded to RGB by one opener.

Training, evaluation, indexing, search by image and the server's uploads all decode here, so
every one of them refuses the same things with the same words.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image, UnidentifiedImageError

from .errors import (
    EMPTY_FILE,
    IMAGE_TOO_LARGE,
    MISSING_IMAGE,
    NOT_AN_IMAGE,
    OUTSIDE_ROOT,
    TRUNCATED_IMAGE,
    UNREADABLE_FILE,
    DataError,
    ItemError,
)

# Pillow's own warning threshold (about 9,459 x 9,459). A 109 KB PNG can claim 30,000 x 30,000
# pixels: 2.7 GB once decoded. Pillow refuses anything over twice this whatever the setting.
DEFAULT_MAX_PIXELS = 89_478_485
# Our limit governs; Pillow's warning below its hard limit would only repeat it.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class Member(Protocol):
    """Where an image's bytes sit inside a shard file (a tar member, a parquet cell)."""

    @property
    def name(self) -> str:
        """What the user calls it: the tar member's name, the parquet row."""

    def read(self, shard: Path) -> bytes:
        """The image's bytes, read from `shard` (already checked to be inside the database)."""


_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class ImageLimits:
    """What a database's images may be: files inside `root` (symlinks resolved), of at most `max_pixels`.

    A reader decides them from its options and every decode applies them again, so a file
    swapped for a symlink after the metadata was read is still refused. `root` None: anywhere
    (an image the user named directly, as `dbprompt search --image` does).
    """

    root: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {self.max_pixels}")
        if self.root is not None:
            object.__setattr__(self, "root", real_path(self.root))

    def outside(self, path: Path) -> str | None:
        """Why `path` may not be read (it resolves outside the root), or None when it may."""
        if self.root is None:
            return None
        real = real_path(path)
        if real.is_relative_to(self.root):
            return None
        where = f"{path} resolves to {real}" if real != Path(os.path.abspath(path)) else str(path)
        return f"{where}, outside {self.root} (give --image-root to read images from a wider folder)"


def real_path(path: str | os.PathLike) -> Path:
    """Absolute, with every symlink resolved: the file that would actually be read."""
    return Path(os.path.realpath(path))


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


def read_image(
    path: str | os.PathLike, limits: ImageLimits | None = None, member: Member | None = None
) -> tuple[Image.Image, str]:
    """Decode `path` (or its `member`, for a shard) to RGB within `limits`, with the sha256 of the very bytes decoded.

    Raises DataError naming the path (and member). The bytes are read once: the digest is what an
    index records, so the server can later refuse a file whose content is no longer what was indexed.
    """
    path = Path(path)
    where = str(path) if member is None else f"{path}: {member.name}"
    limits = limits or ImageLimits()
    detail = limits.outside(path)
    if detail is not None:
        raise DataError(where, OUTSIDE_ROOT, detail)
    real = real_path(path)
    problem = stat_problem(real)
    if problem is not None:
        raise DataError(where, *problem)
    try:
        data = real.read_bytes() if member is None else member.read(real)
    except OSError as e:
        raise DataError(where, UNREADABLE_FILE, e.strerror or str(e)) from e
    except ItemError as e:  # a member that is not what its shard's index said
        raise DataError(where, e.problem, e.detail) from None
    return decode_image(data, where, limits.max_pixels), hashlib.sha256(data).hexdigest()


def open_image(path: str | os.PathLike, limits: ImageLimits | None = None) -> Image.Image:
    """Decode `path` fully to RGB (a full decode, not `verify()`, is what catches truncated pixel data)."""
    return read_image(path, limits)[0]


def decode_image(data: bytes, where: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes to RGB; the pixel count is checked from the header, before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            pixels = im.width * im.height
            if pixels > max_pixels:
                size = f"{im.width} x {im.height} = {pixels:,} pixels"
                raise DataError(where, IMAGE_TOO_LARGE, f"{size}, over the limit of {max_pixels:,} (--max-pixels)")
            return im.convert("RGB")
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(where, IMAGE_TOO_LARGE, f"over Pillow's own limit: {e}") from e
    except UnidentifiedImageError as e:
        raise DataError(where, NOT_AN_IMAGE, "not in any format Pillow reads (PNG, JPEG, WebP, GIF, BMP, TIFF, ...)") from e
    except Exception as e:  # Pillow raises many types for corrupt data
        raise DataError(where, TRUNCATED_IMAGE, plain(e)) from e


def plain(exc: BaseException) -> str:
    """An exception's message without Python object reprs (`<_io.BytesIO object at 0x7f...>`)."""
    return _OBJECT_REPR.sub("the data", str(exc)).strip() or type(exc).__name__
