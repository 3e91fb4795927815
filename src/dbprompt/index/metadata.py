"""The SQLite table of indexed images: what a search result shows and what an update compares against.

Indexes made before tags were kept have no `tags` column: they open and search as they are (no image has
a tag), and `dbprompt index` writes the column when it next rewrites one from a database that has tags.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

_SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY,      -- row in vectors.faiss
    key TEXT NOT NULL UNIQUE,    -- the database's name for the image
    path TEXT NOT NULL,          -- absolute path when indexed
    captions TEXT NOT NULL,      -- JSON list
    bytes INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    sha256 TEXT NOT NULL,        -- of the file's bytes as embedded: the server serves nothing else
    tags TEXT NOT NULL DEFAULT '[]'  -- JSON list: the database's tags column, to filter searches by
)
"""
COLUMNS = "id, key, path, captions, bytes, mtime_ns, width, height, sha256, tags"
# What an index made before tags were kept can be asked for.
UNTAGGED_COLUMNS = COLUMNS.removesuffix(", tags")


@dataclass(frozen=True)
class ImageRow:
    id: int
    key: str
    path: Path
    captions: tuple[str, ...]
    bytes: int
    mtime_ns: int
    width: int
    height: int
    sha256: str
    tags: tuple[str, ...] = ()

    @property
    def stamp(self) -> tuple[int, int]:
        return self.bytes, self.mtime_ns

    @classmethod
    def from_sql(cls, row: tuple) -> "ImageRow":
        """A row selected as COLUMNS, or as UNTAGGED_COLUMNS from an index without tags."""
        id_, key, path, captions, size, mtime, width, height, sha256, *tags = row
        return cls(
            id_, key, Path(path), tuple(json.loads(captions)), size, mtime, width, height, sha256,
            tuple(json.loads(tags[0])) if tags else (),
        )


def write_metadata(path: Path, rows: Sequence[ImageRow]) -> None:
    with sqlite3.connect(path) as db:
        db.execute(_SCHEMA)
        db.executemany(
            f"INSERT INTO images ({COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS.split(',')))})",
            (
                (
                    r.id, r.key, str(r.path), json.dumps(list(r.captions)), r.bytes, r.mtime_ns, r.width, r.height, r.sha256,
                    json.dumps(list(r.tags)),
                )
                for r in rows
            ),
        )
    db.close()


def connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)


def columns_of(db: sqlite3.Connection) -> str:
    """What to select from an open metadata table: COLUMNS, or UNTAGGED_COLUMNS for an index made before tags."""
    names = {name for _, name, *_ in db.execute("PRAGMA table_info(images)").fetchall()}
    return COLUMNS if "tags" in names else UNTAGGED_COLUMNS
