"""The one internal form every database reader produces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image and all of its captions.

    `split` is None when the source file does not say; `assign_splits` then fills it.
    """

    key: str
    path: Path
    captions: tuple[str, ...]
    split: str | None = None
