"""Shard inputs: webdataset tar shards (as img2dataset writes them), listed member by member.

A database of shards is a folder of them, one shard, or a brace pattern (`data/{00000..00999}.tar`,
as webdataset takes it). Listing reads each tar's headers and its small caption members (`.txt`,
`.json`) and seeks past the images, so nothing is decoded or extracted; each image is read later,
on its own, from its member's offset (by a DataLoader worker, a Ray actor, or the server). The
stdlib `tarfile` does this; the webdataset package streams a shard front to back and exposes no
offsets. Only uncompressed tars can be read this way (img2dataset writes them uncompressed).

An image's key is its shard's path under the database's root and its webdataset key
(`00003.tar/000030007`): stable as shards are added. Shards are confined to the root like any
image file; member names never reach the file system.
"""

from __future__ import annotations

import functools
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..untrusted import loads
from .captions import IMAGE_EXTENSIONS, CaptionRule
from .errors import (
    BAD_METADATA,
    DUPLICATE_KEY,
    EMPTY_FILE,
    MISSING_IMAGE,
    OUTSIDE_ROOT,
    TRUNCATED_IMAGE,
    UNREADABLE_FILE,
    BadInputReport,
    DataError,
    ItemError,
    Location,
    Reporter,
)
from .images import DEFAULT_MAX_PIXELS, ImageLimits, real_path, stat_problem
from .readers import _abspath, _assemble, _is_utf8, _Item, _split_name
from .records import Record

TAR_SUFFIXES = (".tar",)
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
# A caption or metadata member larger than this is not one: refuse it rather than read it whole.
MAX_TEXT_MEMBER = 2**20
MAX_SHARDS = 1_000_000
# What may follow a tar's end-of-archive blocks: zeros up to the next 10 KiB record (tar's blocking).
_MAX_PADDING = 2 * 10240
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


def expand_braces(pattern: str) -> list[str]:
    """`a/{000..002}.tar` -> a/000.tar, a/001.tar, a/002.tar; `{x,y}` alternatives; as webdataset expands them."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numbers = _RANGE.fullmatch(body)
    if numbers:
        first, last = numbers.groups()
        if int(last) < int(first):
            raise ValueError(f"{pattern}: the range {{{body}}} is empty")
        if int(last) - int(first) >= MAX_SHARDS:
            raise ValueError(f"{pattern}: the range {{{body}}} names over {MAX_SHARDS:,} shards")
        width = max(len(first), len(last)) if first.startswith("0") else 0
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        choices = body.split(",")
    return [head + choice + rest for choice in choices for rest in expand_braces(tail)]


def is_pattern(path: str | os.PathLike) -> bool:
    """Whether `path` is a brace pattern rather than a file or folder's name."""
    return _BRACE.search(str(path)) is not None and not os.path.exists(path)


def shard_root(source: str | os.PathLike) -> Path:
    """The folder a shard source's images are confined to: the folder itself, or the one holding the shards."""
    text = str(source)
    if is_pattern(text):
        return _abspath(os.path.dirname(text[: text.index("{")]) or ".")
    path = _abspath(text)
    return path if path.is_dir() else path.parent


def list_shards(
    source: str | os.PathLike, suffixes: tuple[str, ...], limits: ImageLimits | None, reporter: Reporter
) -> list[Path]:
    """The shards of a folder (those directly in it), a brace pattern or one file, in order.

    A shard that is missing, empty, or resolves outside `limits`' root is a bad item (the whole shard).
    """
    text = str(source)
    if is_pattern(text):
        try:
            shards = [_abspath(p) for p in expand_braces(text)]
        except ValueError as e:
            raise DataError(text, BAD_METADATA, str(e).removeprefix(f"{text}: ")) from None
    elif os.path.isdir(text):
        shards = sorted(p for p in _abspath(text).iterdir() if p.name.endswith(suffixes) and not p.name.startswith("."))
        if not shards:
            raise DataError(text, BAD_METADATA, f"no {' or '.join(suffixes)} shards in this folder")
    else:
        shards = [_abspath(text)]
    kept = []
    for shard in shards:
        where = Location(shard, 0, unit="file")
        outside = limits.outside(shard) if limits is not None else None
        problem = (OUTSIDE_ROOT, outside) if outside else stat_problem(real_path(shard))
        if problem is None:
            kept.append(shard)
        elif problem[0] == OUTSIDE_ROOT:
            reporter.bad_at(where, *problem)
        else:  # said of a shard, not of an image
            kind, detail = problem
            said = {MISSING_IMAGE: "no such shard", EMPTY_FILE: "zero-byte shard"}.get(kind, detail)
            reporter.bad_at(where, UNREADABLE_FILE, said)
    return kept


@dataclass(frozen=True)
class TarMember:
    """An image member of an uncompressed tar: read from its data offset, nothing else of the shard."""

    name: str
    offset: int
    size: int

    def read(self, shard: Path) -> bytes:
        with open(shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise ItemError(TRUNCATED_IMAGE, f"the shard ends {len(data)} of {self.size} bytes into this member")
        return data


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member as webdataset splits it: at the first dot of the file name, extension
    lower-cased; None for names it skips (no extension, hidden files such as macOS's `._x.jpg`)."""
    folder, _, base = name.rpartition("/")
    if base.startswith(".") or "." not in base:
        return None
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def check_key(key: str) -> None:
    """Refuse a member key that reads as a path climbing out (`../x`, `/x`) or is not valid UTF-8: keys are shown and exported."""
    if not key.strip() or "\0" in key or not _is_utf8(key):
        raise ItemError(BAD_METADATA, f"the key {key!r:.80} is not a valid name")
    if key.startswith("/") or ".." in key.split("/"):
        raise ItemError(BAD_METADATA, f"the key {key!r:.80} climbs out of its shard (an absolute path or '..')")


def _is_image(ext: str) -> bool:
    return "." + ext in IMAGE_EXTENSIONS


@dataclass
class _Sample:
    key: str
    first: tarfile.TarInfo
    images: list[tarfile.TarInfo]
    texts: dict[str, tarfile.TarInfo]  # "txt", "json" members
    bad: bool = False  # one of its members was reported already: the sample is left out


def _samples(tar: tarfile.TarFile, shard: Path, size: int, reporter: Reporter) -> Iterator[_Sample]:
    """Consecutive members sharing a key, as webdataset groups them; bad members reported on the way."""
    current: _Sample | None = None
    seen: set[str] = set()
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, OSError) as e:
            last = f" after {current.first.name}" if current else ""
            reporter.bad(shard, 0, UNREADABLE_FILE, f"not a readable tar archive{last} ({e})", unit="file")
            break
        if info is None:
            _check_end(tar, shard, size, current, reporter)
            break
        parts = split_name(info.name)
        if parts is None or info.isdir():
            continue
        key, ext = parts
        where = Location(shard, 0, unit="member", name=info.name)
        if not _is_image(ext) and ext not in ("txt", "json"):
            continue
        if current is None or key != current.key:
            if current is not None and not current.bad:
                yield current
            current = _Sample(key, info, [], {}, bad=True)
            try:
                check_key(key)
                if key in seen:
                    raise ItemError(DUPLICATE_KEY, f"an earlier sample of this shard has the key {key!r}")
                current.bad = False
            except ItemError as e:
                reporter.bad_at(where, e.problem, e.detail)
            seen.add(key)
        if current.bad:
            continue
        if not info.isreg() or info.issparse():
            reporter.bad_at(where, BAD_METADATA, "not a regular file (a link, device or sparse member)")
            current.bad = True
            continue
        if info.offset_data + info.size > size:
            reporter.bad_at(where, TRUNCATED_IMAGE, "the shard ends before this member's data does")
            current = None
            break
        if _is_image(ext):
            current.images.append(info)
        else:
            current.texts[ext] = info
    if current is not None and not current.bad:
        yield current


def _check_end(tar: tarfile.TarFile, shard: Path, size: int, last: _Sample | None, reporter: Reporter) -> None:
    """tarfile ends quietly at a damaged header: only zero padding may follow the end it found."""
    fileobj = tar.fileobj
    assert fileobj is not None
    fileobj.seek(tar.offset)
    rest = size - tar.offset
    if rest > _MAX_PADDING or fileobj.read(rest).strip(b"\0"):
        after = f" after {last.first.name}" if last else ""
        detail = f"the archive breaks off at byte {tar.offset:,}{after} (a damaged header?); the {rest:,} bytes after it are not read"
        reporter.bad(shard, 0, UNREADABLE_FILE, detail, unit="file")


def _text(tar: tarfile.TarFile, info: tarfile.TarInfo) -> str:
    if info.size > MAX_TEXT_MEMBER:
        raise ItemError(BAD_METADATA, f"{info.name} is over {MAX_TEXT_MEMBER:,} bytes")
    f = tar.extractfile(info)
    assert f is not None  # a regular member
    try:
        return f.read().decode("utf-8")
    except UnicodeDecodeError:
        raise ItemError(BAD_METADATA, f"{info.name} is not valid UTF-8") from None


def _sample_row(tar: tarfile.TarFile, sample: _Sample) -> dict:
    """The sample's fields: its .json object, and its .txt caption as `txt`."""
    row: dict = {}
    if "json" in sample.texts:
        try:
            row = loads(_text(tar, sample.texts["json"]))
        except ValueError as e:
            raise ItemError(BAD_METADATA, f"{sample.texts['json'].name} is not valid JSON: {e}") from None
        if not isinstance(row, dict):
            raise ItemError(BAD_METADATA, f"{sample.texts['json'].name} holds a {type(row).__name__}, not an object")
    if "txt" in sample.texts:
        row = row | {"txt": _text(tar, sample.texts["txt"])}
    return row


def _item(
    tar: tarfile.TarFile, sample: _Sample, shard_key: str, shard: Path, captions: CaptionRule, reporter: Reporter
) -> _Item | None:
    """The sample's image and captions; None when its only captions were empty (reported one by one)."""
    if not sample.images:
        raise ItemError(MISSING_IMAGE, f"no image member ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) for key {sample.key!r}")
    if len(sample.images) > 1:
        raise ItemError(BAD_METADATA, f"several images for key {sample.key!r}: {', '.join(i.name for i in sample.images)}")
    image = sample.images[0]
    where = Location(shard, 0, unit="member", name=image.name)
    row = _sample_row(tar, sample)
    if captions.template is None and captions.column not in row:
        raise ItemError(BAD_METADATA, f"no caption: no .{captions.column} member nor {captions.column!r} in its .json (see --caption-column, --caption-template)")
    kept = captions.row_captions(row, Path(sample.key), where, reporter)
    if not kept:
        return None
    member = TarMember(image.name, image.offset_data, image.size)
    return _Item(where, f"{shard_key}/{sample.key}", shard, kept, _split_name(row.get("split")), member, captions.row_tags(row))


def read_webdataset(
    source: str | os.PathLike,
    *,
    caption_column: str = "txt",
    caption_template: str | None = None,
    tags_column: str = "tags",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip_bad: bool = False,
    report: BadInputReport | None = None,
) -> list[Record]:
    """Read webdataset tar shards: one sample per key, its image (jpg, png, webp, ...), its caption from
    the `.txt` member (or `caption_column` of its `.json`), its split from the `.json`'s "split"."""
    text = str(source)
    if text.lower().endswith(COMPRESSED_TAR_SUFFIXES):
        raise DataError(text, UNREADABLE_FILE, "compressed shards cannot be read member by member; decompress them (gunzip, ...) into .tar")
    root = shard_root(source)
    limits = ImageLimits(root, max_pixels)
    captions = CaptionRule(caption_column, caption_template, tags_column)
    reporter = Reporter(skip_bad, report if report is not None else BadInputReport())
    items: list[_Item] = []
    for shard in list_shards(source, TAR_SUFFIXES, limits, reporter):
        shard_key = shard.relative_to(root).as_posix() if shard.is_relative_to(root) else shard.name
        with open(real_path(shard), "rb") as f:
            try:
                tar = tarfile.open(fileobj=f, mode="r:")
            except (tarfile.TarError, EOFError) as e:
                reporter.bad(shard, 0, UNREADABLE_FILE, f"not an uncompressed tar archive ({e})", unit="file")
                continue
            for sample in _samples(tar, shard, os.fstat(f.fileno()).st_size, reporter):
                try:
                    item = _item(tar, sample, shard_key, shard, captions, reporter)
                except ItemError as e:
                    reporter.bad_at(Location(shard, 0, unit="member", name=sample.first.name), e.problem, e.detail)
                    continue
                if item is not None:
                    items.append(item)
    return _assemble(items, reporter, limits)


# ---- finding a member again, for the server ---------------------------------------------------


def member_keys(key: str, shard: Path) -> list[str]:
    """The member keys `key` may end with after its shard's name (`a/00003.tar/x/1` -> `x/1`)."""
    marker, found, start = shard.name + "/", [], 0
    while (i := key.find(marker, start)) >= 0:
        if i == 0 or key[i - 1] == "/":
            found.append(key[i + len(marker) :])
        start = i + 1
    return found


@functools.lru_cache(maxsize=64)
def _tar_images(real: Path, size: int, mtime_ns: int) -> dict[str, list[TarMember]]:
    """Every image member of a shard by key; cached while the shard keeps its size and mtime."""
    found: dict[str, list[TarMember]] = {}
    with open(real, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
            parts = split_name(info.name)
            if parts and _is_image(parts[1]) and info.isreg() and not info.issparse():
                found.setdefault(parts[0], []).append(TarMember(info.name, info.offset_data, info.size))
    return found


def tar_members(shard: Path, key: str) -> list[TarMember]:
    """The image members of `shard` that an index key may name (the caller checks their content)."""
    real = real_path(shard)
    st = real.stat()
    try:
        table = _tar_images(real, st.st_size, st.st_mtime_ns)
    except (tarfile.TarError, EOFError):
        return []
    return [m for name in member_keys(key, shard) for m in table.get(name, [])]


def is_shard(path: Path) -> bool:
    """Whether an indexed image's path is a shard holding it (a tar or parquet file) rather than the image."""
    return path.name.lower().endswith(TAR_SUFFIXES + (".parquet",))
