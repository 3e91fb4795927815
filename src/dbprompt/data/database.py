"""One entry point for any supported layout: detect it, read it, report what was skipped."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..options import option
from .errors import BAD_METADATA, BadInputReport, DataError
from .readers import METADATA_NAMES, imagefolder_metadata, read_csv, read_imagefolder, read_karpathy
from .records import Record

FORMATS = ("imagefolder", "karpathy", "csv")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a database: the same options for train, eval and index."""

    format: str = option("auto", "database layout", choices=["auto", *FORMATS])
    image_root: str | None = option(None, "directory image paths are relative to (Karpathy, CSV)")
    image_column: str = option("filepath", "CSV/TSV image column")
    caption_column: str = option("title", "CSV/TSV caption column")
    skip_bad: bool = option(False, "skip and count bad images and captions instead of stopping at the first")


@dataclass
class Database:
    """The records of one database, where they came from, and what was skipped on the way."""

    records: list[Record]
    source: Path
    report: BadInputReport = field(default_factory=BadInputReport)


def detect_format(path: str | os.PathLike) -> str:
    """Guess the layout from the path: folder or metadata.* → imagefolder, .json → karpathy, .csv/.tsv → csv."""
    path = Path(path)
    if path.is_dir():
        if imagefolder_metadata(path):
            return "imagefolder"
        raise DataError(str(path), BAD_METADATA, "folder has no metadata.jsonl/.csv, nor split subfolders with one")
    if not path.is_file():
        raise DataError(str(path), BAD_METADATA, "no such file or folder")
    if path.name in METADATA_NAMES:
        return "imagefolder"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "karpathy"  # read_karpathy refuses a JSON without an "images" list
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(str(path), BAD_METADATA, f"cannot tell the format; pass fmt= one of {FORMATS}")


def load_database(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    image_root: str | os.PathLike | None = None,
    image_column: str = "filepath",
    caption_column: str = "title",
    sep: str | None = None,
    skip_bad: bool = False,
) -> Database:
    """Read a database in any supported layout.

    Bad items raise DataError naming file, line and problem; with skip_bad=True they are
    skipped and listed in `report` instead. Problems with the whole file (unreadable, no
    header, not a Karpathy file) and a database left with no records always raise.
    `image_root`, `image_column`, `caption_column` and `sep` apply to the formats that have them.
    """
    if fmt not in FORMATS + ("auto",):
        raise ValueError(f"fmt must be 'auto' or one of {FORMATS}, got {fmt!r}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    source = Path(os.path.abspath(path))
    report = BadInputReport()
    if fmt == "imagefolder":
        if image_root is not None:
            raise ValueError("image_root does not apply to an imagefolder: paths are relative to its metadata")
        records = read_imagefolder(source if source.is_dir() else source.parent, skip_bad=skip_bad, report=report)
    elif fmt == "karpathy":
        records = read_karpathy(source, image_root=image_root, skip_bad=skip_bad, report=report)
    else:
        records = read_csv(
            source, image_root=image_root, image_column=image_column, caption_column=caption_column,
            sep=sep, skip_bad=skip_bad, report=report,
        )
    if not records:
        raise DataError(str(source), BAD_METADATA, f"no usable records ({report.summary()})")
    return Database(records, source, report)


def read_database(path: str | os.PathLike, options: ReadOptions = ReadOptions()) -> Database:
    """`load_database` with a ReadOptions (what the CLI and the Python API pass around)."""
    kwargs = dataclasses.asdict(options)
    return load_database(path, kwargs.pop("format"), **kwargs)
