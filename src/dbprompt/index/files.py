"""The indexed image files as they are now: what search may return and what the server may send.

An index records, for each image, its path, size and the sha256 of the bytes it embedded, and
the folder every image resolved inside. A file is sent only while it still resolves inside that
folder and its bytes still hash to the recorded digest, and exactly those bytes are sent: a file
swapped, forged or symlinked elsewhere after indexing is refused, and even an index made by
someone else can only make the server send bytes its author already knows. An image inside a
shard (a webdataset tar or parquet file) is found again by its key, and checked the same way.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ..data.errors import ItemError
from ..data.images import Member, real_path
from ..data.parquet import parquet_cells
from ..data.shards import TAR_SUFFIXES, is_shard, tar_members
from .metadata import ImageRow


class ImageUnavailable(LookupError):
    """An indexed image that cannot be sent now; the message says why in plain words."""


def present(row: ImageRow) -> bool:
    """Whether the image is still a file: a deleted image drops out of results.

    One stat per hit (a resolved path would cost ten times more per query); where the file now
    leads, and what it holds, is checked when it is sent.
    """
    try:
        return stat.S_ISREG(os.stat(row.path).st_mode)
    except (OSError, ValueError):
        return False


def indexed_bytes(row: ImageRow, root: Path) -> bytes:
    """The file's bytes (a shard member's, for an image in a shard), only when it resolves inside
    `root` and holds what was indexed."""
    real = real_path(row.path)
    if not real.is_relative_to(root):
        raise ImageUnavailable("it now resolves outside the indexed folder")
    if is_shard(row.path):
        return _member_bytes(row, real)
    try:
        with open(real, "rb") as f:
            data = f.read(row.bytes + 1)  # never more than the indexed file's size
    except FileNotFoundError:
        raise ImageUnavailable("it is no longer on disk") from None
    except OSError as exc:
        raise ImageUnavailable(f"it cannot be read ({exc.strerror or exc})") from None
    if len(data) != row.bytes or hashlib.sha256(data).hexdigest() != row.sha256:
        raise ImageUnavailable("it changed since indexing; re-run `dbprompt index`")
    return data


def _members(row: ImageRow) -> list[Member]:
    """The members of its shard that the row's key may name (several where a key is ambiguous, none where it is gone)."""
    if row.path.name.lower().endswith(TAR_SUFFIXES):
        return list(tar_members(row.path, row.key))
    return list(parquet_cells(row.path, row.key))


def _member_bytes(row: ImageRow, real: Path) -> bytes:
    """The bytes of the shard member the row's key names, found again and checked against the recorded sha256."""
    try:
        for member in _members(row):
            data = member.read(real)
            if hashlib.sha256(data).hexdigest() == row.sha256:
                return data
    except FileNotFoundError:
        raise ImageUnavailable("its shard is no longer on disk") from None
    except OSError as exc:
        raise ImageUnavailable(f"its shard cannot be read ({exc.strerror or exc})") from None
    except ItemError:
        pass  # the shard changed under the member: as below
    raise ImageUnavailable("its shard changed since indexing; re-run `dbprompt index`")
