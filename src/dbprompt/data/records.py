"""The one internal form every database reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import Location
from .images import ImageLimits

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image and all of its captions.

    `split` is None when the source file does not say; `assign_splits` then fills it.
    `origin` is where the metadata names the image (`file:line`), so a problem found when the
    image is first decoded can point the user at the line to fix. `limits` (the database's root
    and pixel limit) are applied again at that decode; None: the defaults, anywhere.
    """

    key: str
    path: Path
    captions: tuple[str, ...]
    split: str | None = None
    origin: Location | None = field(default=None, compare=False)
    limits: ImageLimits | None = field(default=None, compare=False, repr=False)
