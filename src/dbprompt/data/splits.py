"""Train/val/test assignment by image, so no image (and none of its captions) leaks across splits."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Iterable

from ..options import option
from .records import SPLITS, Record


@dataclass(frozen=True)
class SplitConfig:
    """How images are split when the database file names no split (recorded in the prompt file)."""

    val_fraction: float = option(0.1, "held-out images for choosing the epoch")
    test_fraction: float = option(0.1, "held-out images for the final evaluation")
    split_seed: int = option(0, "seed of the split by image")


def _unit_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, key)."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(
    records: Iterable[Record], *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> list[Record]:
    """Give every record a split, keeping the input order.

    - Records that already carry a split keep it.
    - If none does, each image goes to a split by a seeded hash of its key. The result is
      deterministic, independent of input order, and stable as the database grows: adding
      images never moves an existing image to another split (a test image stays unseen).
      The fractions are therefore met on average, not exactly; at least one image always
      lands in train (the one that hashes closest to it).
    - If only some records carry a split, the others go to train: the file's own split is
      authoritative and is not diluted with freshly drawn val/test images.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    records = list(records)
    unknown = {r.split for r in records} - set(SPLITS) - {None}
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected one of {SPLITS}")
    if any(r.split is not None for r in records):
        return [r if r.split is not None else dataclasses.replace(r, split="train") for r in records]

    hashes = [_unit_hash(r.key, seed) for r in records]
    splits = ["test" if h < test_fraction else "val" if h < test_fraction + val_fraction else "train" for h in hashes]
    if records and "train" not in splits:
        # Highest hash, ties broken by key, so the choice does not depend on input order.
        closest = max(range(len(records)), key=lambda i: (hashes[i], records[i].key))
        splits[closest] = "train"
    return [dataclasses.replace(r, split=s) for r, s in zip(records, splits)]


def records_for(records: Iterable[Record], split: str) -> list[Record]:
    """The records of one split; refuses unsplit records so a forgotten assign_splits is loud."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    records = list(records)
    unsplit = [r.key for r in records if r.split is None]
    if unsplit:
        raise ValueError(f"{len(unsplit)} record(s) have no split (e.g. {unsplit[0]!r}); call assign_splits first")
    return [r for r in records if r.split == split]


def split_records(records: Iterable[Record], config: SplitConfig = SplitConfig()) -> dict[str, list[Record]]:
    """train, val, test and all: the records of each split."""
    records = assign_splits(records, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.split_seed)
    return {s: records_for(records, s) for s in SPLITS} | {"all": records}
