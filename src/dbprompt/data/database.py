"""One entry point for any supported layout: detect it, read it, report what was skipped."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..options import option
from .errors import BAD_METADATA, BadInputReport, DataError
from .images import DEFAULT_MAX_PIXELS, real_path
from .readers import METADATA_NAMES, read_csv, read_imagefolder, read_karpathy
from .records import Record

FORMATS = ("imagefolder", "karpathy", "csv")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a database: the same options for train, eval and index."""

    format: str = option("auto", "database layout", choices=["auto", *FORMATS])
    image_root: str | None = option(
        None, "directory image paths are relative to (Karpathy, CSV); no image outside it is read (default: the file's folder)"
    )
    image_column: str = option("filepath", "CSV/TSV image column")
    caption_column: str | None = option(None, "caption column (default: text for an imagefolder, title for CSV/TSV)")
    caption_template: str | None = option(
        None,
        "caption images that have none, e.g. 'a photo of {}': {} becomes the image's tags, else its class "
        "folder, else the words of its file name",
    )
    tags_column: str = option("tags", "column of tags (a list, or comma-separated) for --caption-template")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "images with more pixels are bad items (decompression bombs)")
    skip_bad: bool = option(False, "skip and count bad images and captions instead of stopping at the first")


@dataclass
class Database:
    """The records of one database, where they came from, and what was skipped on the way."""

    records: list[Record]
    source: Path
    report: BadInputReport = field(default_factory=BadInputReport)

    @property
    def root(self) -> Path:
        """The folder no image is read outside of, symlinks resolved (the index records it)."""
        limits = self.records[0].limits if self.records else None
        return limits.root if limits is not None and limits.root is not None else real_path(self.source.parent)


def detect_format(path: str | os.PathLike) -> str:
    """Guess the layout from the path: folder or metadata.* → imagefolder, .json → karpathy, .csv/.tsv → csv."""
    path = Path(path)
    if path.is_dir():
        return "imagefolder"  # read_imagefolder says what a folder without metadata needs
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
    caption_column: str | None = None,
    caption_template: str | None = None,
    tags_column: str = "tags",
    sep: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip_bad: bool = False,
) -> Database:
    """Read a database in any supported layout.

    Bad items raise DataError naming file, line and problem; with skip_bad=True they are
    skipped and listed in `report` instead. Problems with the whole file (unreadable, no
    header, not a Karpathy file) and a database left with no records always raise. An image
    that resolves outside the database's root, or has more than `max_pixels`, is a bad item.
    `image_root`, `image_column`, `caption_column` (default: `text` for an imagefolder, `title`
    for CSV), `caption_template`, `tags_column` and `sep` apply to the formats that have them.
    """
    if fmt not in FORMATS + ("auto",):
        raise ValueError(f"fmt must be 'auto' or one of {FORMATS}, got {fmt!r}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    source = Path(os.path.abspath(path))
    report = BadInputReport()
    if fmt == "imagefolder":
        if image_root is not None:
            raise ValueError("image_root does not apply to an imagefolder: paths are relative to its metadata")
        records = read_imagefolder(
            source if source.is_dir() else source.parent, caption_column=caption_column or "text",
            caption_template=caption_template, tags_column=tags_column, max_pixels=max_pixels,
            skip_bad=skip_bad, report=report,
        )
    elif fmt == "karpathy":
        records = read_karpathy(source, image_root=image_root, max_pixels=max_pixels, skip_bad=skip_bad, report=report)
    else:
        records = read_csv(
            source, image_root=image_root, image_column=image_column, caption_column=caption_column or "title",
            caption_template=caption_template, tags_column=tags_column, sep=sep, max_pixels=max_pixels,
            skip_bad=skip_bad, report=report,
        )
    if not records:
        raise DataError(str(source), BAD_METADATA, f"no usable records ({report.summary()})")
    return Database(records, source, report)


def read_database(path: str | os.PathLike, options: ReadOptions = ReadOptions()) -> Database:
    """`load_database` with a ReadOptions (what the CLI and the Python API pass around)."""
    kwargs = dataclasses.asdict(options)
    return load_database(path, kwargs.pop("format"), **kwargs)
