"""Parquet inputs: image bytes or image paths in a column, captions in another (pyarrow).

The layouts met in practice: img2dataset's (`key`, `jpg` bytes, `txt` or `caption`, `status`),
Hugging Face's (`image` as a struct of `bytes` and `path`, `text`), and tables of file paths.
Listing reads every column but the images', batch by batch; an image's bytes are read when it
is first decoded, one row group at a time (a few rows, in the layouts above), never the whole
file. Path rows are checked like a CSV's: relative to `image_root` (default: the files' folder)
and confined to it. Rows are named by their 0-based index, as pyarrow and pandas count them.
"""

from __future__ import annotations

import bisect
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .captions import CaptionRule
from .errors import (
    BAD_METADATA,
    DUPLICATE_KEY,
    MISSING_IMAGE,
    OUTSIDE_ROOT,
    UNREADABLE_FILE,
    BadInputReport,
    DataError,
    ItemError,
    Location,
    Reporter,
)
from .images import DEFAULT_MAX_PIXELS, ImageLimits, real_path
from .readers import _abspath, _assemble, _Item, _locate, _split_name
from .records import Record
from .shards import check_key, list_shards, member_keys, shard_root

SUFFIXES = (".parquet",)
# Looked for in this order when --image-column is not given: bytes first, then paths.
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "file_name", "filepath", "image_path", "path")
CAPTION_COLUMNS = ("caption", "text", "txt")
# img2dataset keeps a row for each failed download: its image is null and its status says why.
STATUS_COLUMN, SUCCESS = "status", "success"
KEY_COLUMN, SPLIT_COLUMN = "key", "split"
_BATCH_ROWS = 8192


@dataclass(frozen=True)
class _Image:
    """Where a file's images are: `column` (`image.bytes` for a struct's field), as bytes or as paths."""

    column: str
    paths: bool


def _is_bytes(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _column_type(schema: pa.Schema, name: str) -> pa.DataType | None:
    """The type of column `name`, or of field `b` of struct column `a` for `a.b`; None when there is none."""
    if name in schema.names:
        return schema.field(name).type
    head, _, sub = name.partition(".")
    if sub and head in schema.names:
        struct = schema.field(head).type
        if pa.types.is_struct(struct) and struct.get_field_index(sub) >= 0:
            return struct.field(sub).type
    return None


def _image_column(schema: pa.Schema, given: str | None, file: Path) -> _Image:
    """The image column the user named, else the first of IMAGE_COLUMNS the file has; whole-file errors raise."""
    name = given or next((c for c in IMAGE_COLUMNS if c in schema.names), None)
    if name is None:
        raise DataError(str(file), BAD_METADATA, f"no image column ({', '.join(IMAGE_COLUMNS)}; or --image-column); it has {schema.names}")
    kind = _column_type(schema, name)
    if kind is None:
        raise DataError(str(file), BAD_METADATA, f"no column {name!r}; it has {schema.names}")
    if pa.types.is_struct(kind):  # Hugging Face's image feature: its bytes, else its path
        sub = next((f for f in ("bytes", "path") if kind.get_field_index(f) >= 0), None)
        if sub is not None:
            return _image_column(schema, f"{name}.{sub}", file)
    if _is_bytes(kind) or _is_text(kind):
        return _Image(name, paths=_is_text(kind))
    raise DataError(str(file), BAD_METADATA, f"column {name!r} holds {kind}, neither image bytes nor image paths")


@dataclass(frozen=True)
class ParquetCell:
    """One image's bytes in a parquet file: `column` of row `row`, read with the rest of its row group."""

    column: str
    row: int

    @property
    def name(self) -> str:
        return f"row {self.row}"

    def read(self, shard: Path) -> bytes:
        st = shard.stat()
        starts = _row_groups(shard, st.st_size, st.st_mtime_ns)
        group = bisect.bisect_right(starts, self.row) - 1
        if not 0 <= group < len(starts) - 1 or self.row >= starts[-1]:
            raise ItemError(MISSING_IMAGE, f"the file has only {starts[-1]} rows now")
        try:
            value = _group_column(shard, st.st_size, st.st_mtime_ns, group, self.column)[self.row - starts[group]].as_py()
        except (pa.ArrowException, OSError) as e:
            raise ItemError(UNREADABLE_FILE, f"row group {group} cannot be read ({e})") from None
        if not isinstance(value, bytes):
            raise ItemError(MISSING_IMAGE, f"{self.column} of this row is {'null' if value is None else type(value).__name__}, not image bytes")
        return value


@functools.lru_cache(maxsize=256)
def _row_groups(real: Path, size: int, mtime_ns: int) -> list[int]:
    """The first row of each row group, and the row count last (cached while the file is unchanged)."""
    meta = pq.ParquetFile(real).metadata
    starts = [0]
    for g in range(meta.num_row_groups):
        starts.append(starts[-1] + meta.row_group(g).num_rows)
    return starts


@functools.lru_cache(maxsize=2)
def _group_column(real: Path, size: int, mtime_ns: int, group: int, column: str) -> pa.Array:
    """One row group's image column: the rows decoded next are mostly its neighbours."""
    values = pq.ParquetFile(real).read_row_group(group, columns=[column]).column(0).combine_chunks()
    _, _, sub = column.partition(".")
    return values.field(sub) if sub and pa.types.is_struct(values.type) else values


def _rows(file: Path, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index, the named columns) of every row, a batch at a time."""
    row = 0
    for batch in pq.ParquetFile(file).iter_batches(batch_size=_BATCH_ROWS, columns=columns):
        for values in batch.to_pylist():
            yield row, values
            row += 1


def _value(values: dict[str, Any], column: str) -> Any:
    """A column's value in a row, `a.b` being field b of struct column a."""
    if column in values:
        return values[column]
    head, _, sub = column.partition(".")
    struct = values.get(head)
    return struct.get(sub) if isinstance(struct, dict) else None


def _row_key(values: dict[str, Any], row: int) -> str:
    """The row's `key` (img2dataset's), else its index."""
    if KEY_COLUMN not in values:
        return str(row)
    key = values[KEY_COLUMN]
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise ItemError(BAD_METADATA, f"key must be a string or an integer, got {key!r:.60}")
    check_key(str(key))
    return str(key)


@dataclass
class _File:
    """How to read one parquet file's rows into items."""

    path: Path
    key: str  # its path under the database's folder
    image: _Image
    captions: CaptionRule
    base: Path  # what image paths are relative to
    root: Path
    limits: ImageLimits
    columns: list[str]  # those listing reads: all but the images' (unless they are paths)


def _row_item(f: _File, row: int, values: dict[str, Any], seen: dict[str, int], reporter: Reporter) -> _Item | None:
    where = Location(f.path, row, unit="row")
    split = _split_name(values.get(SPLIT_COLUMN))
    if f.image.paths:
        key, path = _locate(_value(values, f.image.column), f.base, f.root, f.limits)
        kept = f.captions.row_captions(values, path, where, reporter)
        return _Item(where, key, path, kept, split, tags=f.captions.row_tags(values)) if kept else None
    status = values.get(STATUS_COLUMN, SUCCESS)
    if status not in (SUCCESS, None):
        return None  # img2dataset's record of a failed download: no image, and not one of the database's
    name = _row_key(values, row)
    if name in seen:
        raise ItemError(DUPLICATE_KEY, f"row {seen[name]} has the key {name!r} too")
    seen[name] = row
    kept = f.captions.row_captions(values, Path(name), where, reporter)
    tags = f.captions.row_tags(values)
    return _Item(where, f"{f.key}/{name}", f.path, kept, split, ParquetCell(f.image.column, row), tags) if kept else None


def _open(file: Path, folder: Path, options: dict[str, Any], limits: ImageLimits, reporter: Reporter) -> _File | None:
    """The file's columns, checked; None (reported) when it is no parquet file or its images lie outside the root."""
    try:
        schema = pq.read_schema(real_path(file))
    except (pa.ArrowException, OSError) as e:
        reporter.bad(file, 0, UNREADABLE_FILE, f"not a readable parquet file ({e})", unit="file")
        return None
    image = _image_column(schema, options["image_column"], file)
    caption = options["caption_column"] or next((c for c in CAPTION_COLUMNS if c in schema.names), CAPTION_COLUMNS[0])
    if options["caption_template"] is None and caption not in schema.names:
        hint = "see --caption-column, or --caption-template for images without captions"
        raise DataError(str(file), BAD_METADATA, f"no caption column ({', '.join(CAPTION_COLUMNS)}; {hint}); it has {schema.names}")
    outside = None if image.paths else limits.outside(file)
    if outside is not None:  # the file holds the images: it is confined like them
        reporter.bad(file, 0, OUTSIDE_ROOT, outside, unit="file")
        return None
    assert limits.root is not None
    key = file.relative_to(folder).as_posix() if file.is_relative_to(folder) else file.name
    base = options["image_root"] or file.parent
    rule = CaptionRule(caption, options["caption_template"], options["tags_column"])
    wanted = [image.column] if image.paths else []
    wanted += [c for c in (caption, rule.tags, SPLIT_COLUMN, KEY_COLUMN, STATUS_COLUMN) if c in schema.names]
    return _File(file, key, image, rule, base, limits.root, limits, list(dict.fromkeys(wanted)))


def read_parquet(
    source: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    caption_template: str | None = None,
    tags_column: str = "tags",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip_bad: bool = False,
    report: BadInputReport | None = None,
) -> list[Record]:
    """Read parquet files (a folder of them, one, or a brace pattern): image bytes or paths, captions,
    and a `split` and `key` column where there is one."""
    folder = shard_root(source)
    root = _abspath(image_root) if image_root is not None else folder
    limits = ImageLimits(root, max_pixels)
    reporter = Reporter(skip_bad, report if report is not None else BadInputReport())
    options = {"image_root": image_root and root, "image_column": image_column, "caption_column": caption_column,
               "caption_template": caption_template, "tags_column": tags_column}
    items: list[_Item] = []
    for file in list_shards(source, SUFFIXES, None, reporter):
        f = _open(file, folder, options, limits, reporter)
        if f is None:
            continue
        seen: dict[str, int] = {}
        row = -1
        try:
            for row, values in _rows(real_path(file), f.columns):
                try:
                    item = _row_item(f, row, values, seen, reporter)
                except ItemError as e:
                    reporter.bad_at(Location(file, row, unit="row"), e.problem, e.detail)
                    continue
                if item is not None:
                    items.append(item)
        except (pa.ArrowException, OSError) as e:
            reporter.bad(file, 0, UNREADABLE_FILE, f"cannot be read past row {row + 1} ({e})", unit="file")
    return _assemble(items, reporter, limits)


# ---- finding a row again, for the server ------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _rows_by_key(real: Path, size: int, mtime_ns: int) -> tuple[dict[str, int] | None, int, tuple[str, ...]]:
    """(row of each key, or None when rows are named by index; the row count; the columns that may hold image bytes)."""
    pf = pq.ParquetFile(real)
    schema = pf.schema_arrow
    columns = tuple(
        name + (".bytes" if pa.types.is_struct(field.type) else "")
        for name, field in zip(schema.names, schema)
        if _is_bytes(field.type) or (pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0)
    )
    keys = None
    if KEY_COLUMN in schema.names:
        keys = {}
        for row, values in _rows(real, [KEY_COLUMN]):
            keys.setdefault(str(values[KEY_COLUMN]), row)
    return keys, pf.metadata.num_rows, columns


def parquet_cells(shard: Path, key: str) -> list[ParquetCell]:
    """The cells an index key may name in `shard` (the caller checks their content against the index)."""
    real = real_path(shard)
    st = real.stat()
    try:
        keys, count, columns = _rows_by_key(real, st.st_size, st.st_mtime_ns)
    except pa.ArrowException:
        return []
    rows = []
    for name in member_keys(key, shard):
        if keys is not None and name in keys:
            rows.append(keys[name])
        elif keys is None and name.isdigit() and int(name) < count:
            rows.append(int(name))
    return [ParquetCell(column, row) for row in rows for column in columns]
