"""How the search server sends an indexed image: a cached thumbnail, its media type, a safe name to save it as."""

from __future__ import annotations

import io
import mimetypes
import re
import threading
from collections import OrderedDict

from PIL import Image

from .data.shards import is_shard
from .index import ImageRow


class Thumbnails:
    """JPEG thumbnails by (content sha256, size): changed content has another key, so none is ever stale."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str, size: int, data: bytes) -> bytes:
        key = (sha256, size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        jpeg = thumbnail(data, size)
        with self._lock:
            self._cache[key] = jpeg
            if len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return jpeg


def thumbnail(data: bytes, size: int) -> bytes:
    """JPEG bytes of an indexed image (its bytes already checked against the index)."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))  # JPEG decodes at a reduced scale: far less work for big photos
        im = im.convert("RGB")
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def media_type_of(row: ImageRow, data: bytes) -> str:
    """The image type its file name says; for a shard member (its path names the shard), what its bytes say."""
    media_type = mimetypes.guess_type(row.path.name)[0] or ""
    if is_shard(row.path):
        try:
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                media_type = Image.MIME.get(im.format or "", "")
        except Exception:  # PIL raises many types for bad data
            media_type = ""
    return media_type if media_type.startswith("image/") else "application/octet-stream"


def file_name(row: ImageRow, media_type: str) -> str:
    """A safe name to save an image as: its key's last part in plain characters, with its type's extension."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", row.key.replace("\\", "/").rsplit("/", 1)[-1]).lstrip("._")[:120]
    extension = mimetypes.guess_extension(media_type) or ""
    name = name or f"image-{row.id}"
    return name if not extension or name.lower().endswith(extension) else f"{name}{extension}"
