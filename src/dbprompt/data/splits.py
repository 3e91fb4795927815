"""Train/val/test assignment by image, so no image (and none of its captions) leaks across splits."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ..options import option
from .records import SPLITS, Record

# Below this many images a split's R@K moves by whole points per image: say so.
SMALL_SPLIT = 100
# The DataError problem of a database too small to split (see data.errors).
TOO_FEW_IMAGES = "too few images"


@dataclass(frozen=True)
class SplitConfig:
    """How images are split when the database file names no split (recorded in the prompt file)."""

    val_fraction: float = option(0.1, "held-out images for choosing the epoch (carved out of the training images when the file names no validation split)")
    test_fraction: float = option(0.1, "held-out images for the final evaluation")
    split_seed: int = option(0, "seed of the split by image")

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> "SplitConfig":
        """The config a prompt file recorded (its extra "splits"), older names and the split's summary ignored.

        Only numbers are taken: the file may come from anyone.
        """
        values = dict(recorded) if isinstance(recorded, dict) else {}
        if "seed" in values:  # the name before 0.2
            values["split_seed"] = values.pop("seed")
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return cls(**{f.name: numbers[f.name] for f in dataclasses.fields(cls) if f.name in numbers})


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


def carve_validation(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """Move `fraction` of the training images to val, by image and seeded, when no image is in val.

    The hash is salted, so it is independent of the draw that made the test split; like that
    draw it is stable as the database grows. At least one image is carved (the lowest hash)
    and at least two stay in train, where there are three training images to share.
    """
    train = [i for i, r in enumerate(records) if r.split == "train"]
    if fraction <= 0 or len(train) < 3 or any(r.split == "val" for r in records):
        return records
    hashes = {i: _unit_hash("val\0" + records[i].key, seed) for i in train}
    ordered = sorted(train, key=lambda i: (hashes[i], records[i].key))
    drawn = sum(hashes[i] < fraction for i in train)
    carved = set(ordered[: min(max(1, drawn), len(train) - 2)])
    return [dataclasses.replace(r, split="val") if i in carved else r for i, r in enumerate(records)]


def records_for(records: Iterable[Record], split: str) -> list[Record]:
    """The records of one split; refuses unsplit records so a forgotten assign_splits is loud."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    records = list(records)
    unsplit = [r.key for r in records if r.split is None]
    if unsplit:
        raise ValueError(f"{len(unsplit)} record(s) have no split (e.g. {unsplit[0]!r}); call assign_splits first")
    return [r for r in records if r.split == split]


@dataclass(frozen=True)
class Splits:
    """The records of each split, and how they were made: what a user needs to trust a score."""

    parts: dict[str, list[Record]]
    config: SplitConfig
    from_file: bool
    carved: bool

    def __getitem__(self, split: str) -> list[Record]:
        return self.parts[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self.parts)

    @property
    def counts(self) -> dict[str, int]:
        return {s: len(self.parts[s]) for s in SPLITS}

    def how(self) -> str:
        """Where the splits came from, with the options that made them; reads after "splits made"."""
        cfg = self.config
        if not self.from_file:
            return (
                f"by a seeded hash of each image's key (--val-fraction {cfg.val_fraction:g} "
                f"--test-fraction {cfg.test_fraction:g} --split-seed {cfg.split_seed})"
            )
        if self.carved:
            return (
                "as the database file names them, but the file names no validation split: validation was carved "
                f"out of its training images by a seeded hash (--val-fraction {cfg.val_fraction:g} --split-seed {cfg.split_seed})"
            )
        return "as the database file names them"

    def remedy(self, split: str, trained: bool = False) -> str:
        """What to change for a bigger `split`; `trained`: prompts were trained on these splits already."""
        if self.from_file and not (split == "val" and self.carved):
            return f"add images to the file's {split} split"
        flag = f"{'--val-fraction' if split == 'val' else '--test-fraction'} (now {getattr(self.config, split + '_fraction'):g})"
        if trained:
            return f"add images, or train again with a higher {flag}: changing it only here would evaluate on images training saw"
        return f"raise {flag} or add images"

    def small(self, split: str, minimum: int = SMALL_SPLIT, *, trained: bool = False) -> str | None:
        """A warning when `split` is too small to measure R@K finely, else None (`trained`: see remedy)."""
        n = len(self.parts[split])
        if n >= minimum:
            return None
        name = {"val": "validation", "test": "test"}.get(split, split)
        step = f"; each image is {100 / n:.1f} points of R@1" if n else ""
        return f"the {name} split has only {n} images{step}; splits made {self.how()}. For a bigger one, {self.remedy(split, trained)}."

    def warnings(self, *splits: str, trained: bool = False) -> list[str]:
        """`small`'s warnings for those of `splits` that are held out (val, test) and small."""
        return [w for s in splits if s in ("val", "test") and (w := self.small(s, trained=trained))]

    def to_json(self) -> dict[str, Any]:
        """What the prompt file records: the config that reproduces the split, and a summary of it."""
        return dataclasses.asdict(self.config) | {"how": self.how(), "images": self.counts}


def split_records(records: Iterable[Record], config: SplitConfig = SplitConfig()) -> Splits:
    """train, val, test and all, with validation carved out of train when the split has none."""
    records = list(records)
    from_file = any(r.split is not None for r in records)
    records = assign_splits(records, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.split_seed)
    had_val = any(r.split == "val" for r in records)
    records = carve_validation(records, config.val_fraction, config.split_seed)
    parts = {s: records_for(records, s) for s in SPLITS} | {"all": records}
    return Splits(parts, config, from_file, carved=from_file and not had_val and bool(parts["val"]))
