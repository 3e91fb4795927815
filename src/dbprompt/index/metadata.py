"""The SQLite table of indexed images: what a search result shows and what an update compares against."""

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
    sha256 TEXT NOT NULL         -- of the file's bytes as embedded: the server serves nothing else
)
"""
COLUMNS = "id, key, path, captions, bytes, mtime_ns, width, height, sha256"


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

    @property
    def stamp(self) -> tuple[int, int]:
        return self.bytes, self.mtime_ns

    @classmethod
    def from_sql(cls, row: tuple) -> "ImageRow":
        id_, key, path, captions, size, mtime, width, height, sha256 = row
        return cls(id_, key, Path(path), tuple(json.loads(captions)), size, mtime, width, height, sha256)


def write_metadata(path: Path, rows: Sequence[ImageRow]) -> None:
    with sqlite3.connect(path) as db:
        db.execute(_SCHEMA)
        db.executemany(
            f"INSERT INTO images ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (r.id, r.key, str(r.path), json.dumps(list(r.captions)), r.bytes, r.mtime_ns, r.width, r.height, r.sha256)
                for r in rows
            ),
        )
    db.close()


def connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
