"""The one internal form every database reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import Location
from .images import ImageLimits, Member

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image and all of its captions.

    `split` is None when the source file does not say; `assign_splits` then fills it.
    `origin` is where the metadata names the image (`file:line`), so a problem found when the
    image is first decoded can point the user at the line to fix. `limits` (the database's root
    and pixel limit) are applied again at that decode; None: the defaults, anywhere. `member`:
    the image is not the file `path` but a member of it (a webdataset tar or parquet shard). `tags`: those
    of its metadata's tags column, whether or not they made its captions: an index keeps them to filter by.
    """

    key: str
    path: Path
    captions: tuple[str, ...]
    split: str | None = None
    origin: Location | None = field(default=None, compare=False)
    limits: ImageLimits | None = field(default=None, compare=False, repr=False)
    member: Member | None = None
    tags: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """The file its bytes come from, and the member of it where it is one."""
        return f"{self.path}: {self.member.name}" if self.member is not None else str(self.path)


def text_key(text: str) -> str:
    """What makes two texts one query, and their images positives for each other: case and spacing ignored."""
    return " ".join(text.lower().split())
