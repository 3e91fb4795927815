"""One entry point for any supported layout: detect it, read it, report what was skipped."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..options import option
from .errors import BAD_METADATA, BadInputReport, DataError
from .images import DEFAULT_MAX_PIXELS, real_path
from .parquet import read_parquet
from .readers import METADATA_NAMES, imagefolder_metadata, read_csv, read_imagefolder, read_karpathy
from .records import Record
from .shards import COMPRESSED_TAR_SUFFIXES, TAR_SUFFIXES, is_pattern, read_webdataset

FORMATS = ("imagefolder", "karpathy", "csv", "webdataset", "parquet")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a database: the same options for train, eval and index."""

    format: str = option("auto", "database layout", choices=["auto", *FORMATS])
    image_root: str | None = option(
        None, "directory image paths are relative to (Karpathy, CSV, parquet); no image outside it is read (default: the file's folder)"
    )
    image_column: str | None = option(
        None, "image column (default: filepath for CSV/TSV; for parquet the first of jpg, png, webp, image, ..., file_name, path)"
    )
    caption_column: str | None = option(
        None,
        "caption column (default: text for an imagefolder, title for CSV/TSV, the .txt member (or .json field) for "
        "webdataset, the first of caption, text, txt for parquet)",
    )
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


def _shard_format(name: str) -> str | None:
    name = name.lower()
    if name.endswith(TAR_SUFFIXES + COMPRESSED_TAR_SUFFIXES):
        return "webdataset"  # read_webdataset says what to do with a compressed one
    return "parquet" if name.endswith(".parquet") else None


def _folder_format(path: Path) -> str:
    """An imagefolder's metadata wins; then tar shards (img2dataset writes a parquet of metadata beside each), then parquet."""
    try:
        if imagefolder_metadata(path):
            return "imagefolder"
    except DataError:
        return "imagefolder"  # read_imagefolder raises the same error
    names = {_shard_format(p.name) for p in path.iterdir() if p.is_file() and not p.name.startswith(".")}
    return next((f for f in ("webdataset", "parquet") if f in names), "imagefolder")


def detect_format(path: str | os.PathLike) -> str:
    """Guess the layout from the path: a folder of tar or parquet shards, or a shard or brace pattern of
    them → webdataset or parquet; another folder or metadata.* → imagefolder; .json → karpathy; .csv/.tsv → csv."""
    if is_pattern(path):
        found = _shard_format(str(path))
        if found is None:
            raise DataError(str(path), BAD_METADATA, "a brace pattern names .tar or .parquet shards")
        return found
    path = Path(path)
    if path.is_dir():
        return _folder_format(path)  # read_imagefolder says what a folder without metadata needs
    if not path.is_file():
        raise DataError(str(path), BAD_METADATA, "no such file or folder")
    if path.name in METADATA_NAMES:
        return "imagefolder"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "karpathy"  # read_karpathy refuses a JSON without an "images" list
    if suffix in (".csv", ".tsv"):
        return "csv"
    shards = _shard_format(path.name)
    if shards is not None:
        return shards
    raise DataError(str(path), BAD_METADATA, f"cannot tell the format; pass fmt= one of {FORMATS}")


def require_captions(database: Database, use: str) -> None:
    """Stop, naming the database, where images have no caption but `use` needs them."""
    missing = sum(1 for r in database.records if not r.captions)
    if missing:
        raise DataError(
            str(database.source), BAD_METADATA,
            f"{missing:,} of {len(database.records):,} images have no caption, which {use} needs (a folder without "
            "metadata.jsonl or metadata.csv); --caption-template 'a photo of {}' captions them by class folder or file "
            "name, and `dbprompt train --feedback INDEX_DIR` trains from the marks made on the search page",
        )


def load_database(
    path: str | os.PathLike,
    fmt: str = "auto",
    *,
    image_root: str | os.PathLike | None = None,
    image_column: str | None = None,
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
    `image_root`, `image_column` (default: `filepath` for CSV; detected for parquet),
    `caption_column` (default: `text` for an imagefolder, `title` for CSV, `txt` for webdataset,
    detected for parquet), `caption_template`, `tags_column` and `sep` apply to the formats that
    have them. Shard formats (webdataset, parquet) take a folder of shards, one, or a brace pattern.
    """
    if fmt not in FORMATS + ("auto",):
        raise ValueError(f"fmt must be 'auto' or one of {FORMATS}, got {fmt!r}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    source = Path(os.path.abspath(path))
    report = BadInputReport()
    if fmt in ("imagefolder", "webdataset") and image_root is not None:
        raise ValueError(f"image_root does not apply to {fmt}: its images are in its own folder or shards")
    if fmt == "webdataset":
        records = read_webdataset(
            source, caption_column=caption_column or "txt", caption_template=caption_template,
            tags_column=tags_column, max_pixels=max_pixels, skip_bad=skip_bad, report=report,
        )
    elif fmt == "parquet":
        records = read_parquet(
            source, image_root=image_root, image_column=image_column, caption_column=caption_column,
            caption_template=caption_template, tags_column=tags_column, max_pixels=max_pixels, skip_bad=skip_bad,
            report=report,
        )
    elif fmt == "imagefolder":
        records = read_imagefolder(
            source if source.is_dir() else source.parent, caption_column=caption_column or "text",
            caption_template=caption_template, tags_column=tags_column, max_pixels=max_pixels,
            skip_bad=skip_bad, report=report,
        )
    elif fmt == "karpathy":
        records = read_karpathy(source, image_root=image_root, max_pixels=max_pixels, skip_bad=skip_bad, report=report)
    else:
        records = read_csv(
            source, image_root=image_root, image_column=image_column or "filepath", caption_column=caption_column or "title",
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
