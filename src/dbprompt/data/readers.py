"""Readers for the row-based database layouts; each returns one Record per image, captions merged.

Readers check the metadata and that every referenced file exists, is not empty and resolves
(symlinks included) inside the database's root: the metadata's folder, or `image_root`. They do
not decode images. The first decode of each image (when a command first needs its pixels) finds
truncated or non-image files and names the metadata line through `Record.origin`. Shard
layouts (webdataset tar, parquet) are read in `shards.py` and `parquet.py` with the same rules.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..untrusted import brief, loads
from .captions import CaptionRule, caption_list, folder_images, words
from .errors import (
    BAD_METADATA,
    CONFLICTING_SPLIT,
    OUTSIDE_ROOT,
    UNKNOWN_SPLIT,
    UNREADABLE_FILE,
    BadInputReport,
    DataError,
    ItemError,
    Location,
    Reporter,
)
from .images import DEFAULT_MAX_PIXELS, ImageLimits, Member, real_path, stat_problem
from .records import SPLITS, Record

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
# Names other tools use for our three splits: Karpathy's "restval" is extra training data.
SPLIT_ALIASES = {"restval": "train", "validation": "val"}


@dataclass
class _Item:
    where: Location
    key: str
    path: Path
    captions: list[str]
    split: str | None
    member: Member | None = None
    tags: tuple[str, ...] = ()


def _abspath(path: str | os.PathLike) -> Path:
    """Absolute and normalised, but symlinks kept: keys should read as the user wrote them."""
    return Path(os.path.abspath(path))


def _split_name(value: Any) -> str | None:
    """Map a split value from a file onto SPLITS; None or "" means the file does not say."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ItemError(BAD_METADATA, f"split must be a string, got {brief(value)}")
    name = value.strip().lower()
    name = SPLIT_ALIASES.get(name, name)
    if name not in SPLITS:
        raise ItemError(UNKNOWN_SPLIT, f"{brief(value)} is not one of {SPLITS + tuple(SPLIT_ALIASES)}")
    return name


def _folder_split(name: str) -> str | None:
    """The split a folder's name gives (train/, validation/, test/ ...), or None for any other name."""
    name = SPLIT_ALIASES.get(name.lower(), name.lower())
    return name if name in SPLITS else None


def _locate(raw: Any, base: Path, key_root: Path, limits: ImageLimits) -> tuple[str, Path]:
    """(key, absolute path) of an image reference; refused when it resolves outside the root.

    The key is relative to the root: as written when it reads so, else as resolved.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ItemError(BAD_METADATA, f"image path must be a non-empty string, got {brief(raw)}")
    if "\0" in raw or not _is_utf8(raw):
        raise ItemError(BAD_METADATA, f"image path {brief(raw)} is not a valid file name")
    path = _abspath(base / raw)
    outside = limits.outside(path)
    if outside is not None:
        raise ItemError(OUTSIDE_ROOT, outside)
    assert limits.root is not None
    key = path.relative_to(key_root) if path.is_relative_to(key_root) else real_path(path).relative_to(limits.root)
    return key.as_posix(), path


def _assemble(items: list[_Item], reporter: Reporter, limits: ImageLimits) -> list[Record]:
    """Check each file exists and is not empty, then merge items of the same image in file order."""
    problems = {path: stat_problem(path) for path in dict.fromkeys(item.path for item in items)}
    merged: dict[str, _Item] = {}
    for item in items:
        problem = problems[item.path]
        if problem is not None:
            kind, detail = problem
            reporter.bad_at(item.where, kind, str(item.path) + (f" ({detail})" if detail else ""))
            continue
        first = merged.setdefault(item.key, _Item(item.where, item.key, item.path, [], item.split, item.member))
        if first.split != item.split:
            detail = f"{item.key} is {item.split!r} here but {first.split!r} at {first.where}"
            reporter.bad_at(item.where, CONFLICTING_SPLIT, detail)
            continue
        first.captions.extend(item.captions)
        first.tags = tuple(dict.fromkeys(first.tags + item.tags))
    return [Record(i.key, i.path, tuple(i.captions), i.split, i.where, limits, i.member, i.tags) for i in merged.values()]


# ---- row-based metadata: imagefolder (jsonl/csv) and open_clip CSV/TSV -----------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(str(path), UNREADABLE_FILE, str(e)) from e


def _jsonl_rows(path: Path, reporter: Reporter) -> Iterator[tuple[int, dict]]:
    for line, raw in enumerate(_read_bytes(path).split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            row = loads(raw)
        except ValueError as e:  # bad JSON, bad UTF-8, or nested too deeply
            reporter.bad(path, line, BAD_METADATA, f"not valid JSON: {e}")
            continue
        if not isinstance(row, dict):
            reporter.bad(path, line, BAD_METADATA, f"expected a JSON object, got {type(row).__name__}")
            continue
        yield line, row


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogateescape left undecodable bytes as lone surrogates
        return False
    return True


def _csv_rows(path: Path, sep: str, required: tuple[str, ...], reporter: Reporter) -> Iterator[tuple[int, dict]]:
    """Rows as dicts with the physical line (header is line 1) where each row starts."""
    text = _read_bytes(path).decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        header = next(reader)
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}:1", BAD_METADATA, f"header lacks column(s) {missing}; it has {header}")
        end = reader.line_num
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row:  # blank line
                continue
            if len(row) != len(header):
                reporter.bad(path, start, BAD_METADATA, f"{len(row)} field(s), header has {len(header)}")
            elif not all(map(_is_utf8, row)):
                reporter.bad(path, start, BAD_METADATA, "not valid UTF-8")
            else:
                yield start, dict(zip(header, row))
    except StopIteration:
        raise DataError(f"{path}:1", BAD_METADATA, "empty file, no header") from None
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}", BAD_METADATA, str(e)) from e


def _row_items(
    rows: Iterator[tuple[int, dict]],
    file: Path,
    columns: tuple[str, str | None],
    captions: CaptionRule,
    base: Path,
    key_root: Path,
    limits: ImageLimits,
    folder_split: str | None,
    reporter: Reporter,
) -> Iterator[_Item]:
    image_col, split_col = columns
    for line, row in rows:
        where = Location(file, line)
        try:
            if image_col not in row:
                raise ItemError(BAD_METADATA, f"missing column {image_col!r}")
            key, path = _locate(row[image_col], base, key_root, limits)
            split = _split_name(row.get(split_col)) if split_col else None
            if split and folder_split and split != folder_split:
                raise ItemError(CONFLICTING_SPLIT, f"split {split!r} inside the {folder_split!r} folder")
            kept = captions.row_captions(row, path, where, reporter)
        except ItemError as e:
            reporter.bad_at(where, e.problem, e.detail)
            continue
        if kept:
            yield _Item(where, key, path, kept, split or folder_split, tags=captions.row_tags(row))


def imagefolder_metadata(root: Path) -> list[tuple[Path, str | None]]:
    """The metadata files of a Hugging Face imagefolder, each with the split its folder implies."""
    def metadata_in(folder: Path) -> Path | None:
        found = [folder / n for n in METADATA_NAMES if (folder / n).is_file()]
        if len(found) > 1:
            raise DataError(str(folder), BAD_METADATA, "both metadata.jsonl and metadata.csv; keep one")
        return found[0] if found else None

    own = metadata_in(root)
    if own is not None:
        return [(own, None)]
    result = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = metadata_in(sub)
        if meta is None:
            continue
        try:
            result.append((meta, _split_name(sub.name)))
        except ItemError as e:
            raise DataError(str(sub), UNKNOWN_SPLIT, f"split folder {e.detail}") from None
    return result


def _folder_items(root: Path, captions: CaptionRule, limits: ImageLimits, reporter: Reporter) -> list[_Item]:
    """An imagefolder without metadata: every image file, captioned from its class folder or file name
    (with a caption template; without one, uncaptioned: to index, search and mark)."""
    items = []
    for path, split, label in folder_images(root, _folder_split):
        where = Location(path, 0, unit="file")
        try:
            key, path = _locate(str(path), root, root, limits)
            text = [captions.fill(label or words(path.stem))] if captions.template is not None else []
            items.append(_Item(where, key, path, text, split))
        except ItemError as e:
            reporter.bad_at(where, e.problem, e.detail)
    return items


def read_imagefolder(
    root: str | os.PathLike,
    *,
    caption_column: str = "text",
    caption_template: str | None = None,
    tags_column: str = "tags",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip_bad: bool = False,
    report: BadInputReport | None = None,
) -> list[Record]:
    """Read a Hugging Face imagefolder: metadata.jsonl/.csv with file_name + a caption column (+ split),
    or split subfolders; or a folder of images without metadata (captioned by a caption template, else
    uncaptioned: `require_captions` stops what needs captions)."""
    root = _abspath(root)
    metadata = imagefolder_metadata(root) if root.is_dir() else []
    captions = CaptionRule(caption_column, caption_template, tags_column)
    limits = ImageLimits(root, max_pixels)
    reporter = Reporter(skip_bad, report if report is not None else BadInputReport())
    if not metadata:
        if not root.is_dir():
            raise DataError(str(root), BAD_METADATA, "not a folder, nor a metadata.jsonl or metadata.csv")
        items = _folder_items(root, captions, limits, reporter)
        if not items and not reporter.report.items:
            raise DataError(str(root), BAD_METADATA, "no metadata.jsonl or metadata.csv, and no image files")
        return _assemble(items, reporter, limits)
    items: list[_Item] = []
    for meta, folder_split in metadata:
        if meta.suffix == ".jsonl":
            rows = _jsonl_rows(meta, reporter)
        else:
            rows = _csv_rows(meta, ",", ("file_name",) if caption_template else ("file_name", caption_column), reporter)
        columns = ("file_name", "split")
        items.extend(_row_items(rows, meta, columns, captions, meta.parent, root, limits, folder_split, reporter))
    return _assemble(items, reporter, limits)


def _csv_separator(path: Path) -> str:
    """Tab for .tsv, comma otherwise: the convention open_clip's loaders follow."""
    return "\t" if path.suffix.lower() == ".tsv" else ","


def read_csv(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    image_column: str = "filepath",
    caption_column: str = "title",
    caption_template: str | None = None,
    tags_column: str = "tags",
    split_column: str | None = None,
    sep: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip_bad: bool = False,
    report: BadInputReport | None = None,
) -> list[Record]:
    """Read an open_clip-style CSV/TSV; image paths are relative to, and confined to, image_root
    (default: the file's folder)."""
    path = _abspath(path)
    root = _abspath(image_root) if image_root is not None else path.parent
    captions = CaptionRule(caption_column, caption_template, tags_column)
    limits = ImageLimits(root, max_pixels)
    reporter = Reporter(skip_bad, report if report is not None else BadInputReport())
    required = (image_column,) if caption_template else (image_column, caption_column)
    rows = _csv_rows(path, sep or _csv_separator(path), required, reporter)
    items = _row_items(rows, path, (image_column, split_column), captions, root, root, limits, None, reporter)
    return _assemble(list(items), reporter, limits)


# ---- Karpathy split JSON ----------------------------------------------------------------------


def _karpathy_item(entry: Any, where: Location, root: Path, limits: ImageLimits, reporter: Reporter) -> _Item | None:
    if not isinstance(entry, dict):
        raise ItemError(BAD_METADATA, f"expected a JSON object, got {type(entry).__name__}")
    folder = entry.get("filepath") or ""
    if not isinstance(folder, str):
        raise ItemError(BAD_METADATA, f"filepath must be a string, got {brief(folder)}")
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise ItemError(BAD_METADATA, f"filename must be a non-empty string, got {brief(filename)}")
    key, path = _locate(os.path.join(folder, filename), root, root, limits)
    split = _split_name(entry.get("split"))
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not all(isinstance(s, dict) and "raw" in s for s in sentences):
        raise ItemError(BAD_METADATA, "sentences must be a list of objects with a 'raw' caption")
    captions = caption_list([s["raw"] for s in sentences], where, reporter)
    return _Item(where, key, path, captions, split) if captions else None


def read_karpathy(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip_bad: bool = False,
    report: BadInputReport | None = None,
) -> list[Record]:
    """Read a Karpathy split file (dataset_coco.json, ...); problems are located by index into `images`."""
    path = _abspath(path)
    root = _abspath(image_root) if image_root is not None else path.parent
    limits = ImageLimits(root, max_pixels)
    raw = _read_bytes(path)
    try:
        data = loads(raw, max_depth=None)  # the entries are only type-checked, never walked deeper
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}", BAD_METADATA, f"not valid JSON: {e.msg}") from e
    except ValueError as e:
        raise DataError(str(path), BAD_METADATA, f"not valid JSON: {e}") from e
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(str(path), BAD_METADATA, "no top-level 'images' list, so not a Karpathy split file")
    reporter = Reporter(skip_bad, report if report is not None else BadInputReport())
    items = []
    for index, entry in enumerate(images):
        where = Location(path, index, unit="image")
        try:
            item = _karpathy_item(entry, where, root, limits, reporter)
        except ItemError as e:
            reporter.bad_at(where, e.problem, e.detail)
            continue
        if item is not None:
            items.append(item)
    return _assemble(items, reporter, limits)
