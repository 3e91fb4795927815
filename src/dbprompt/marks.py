"""A user's marks on search results (this image is, or is not, what the query asked for), kept durably.

Marks live beside the index directory, in `IDX.marks.sqlite`, not inside it: `dbprompt index`
replaces the directory as a whole, and the marks must outlive every rebuild. SQLite in WAL mode,
one transaction per mark, committed with a full sync before the caller answers: a mark that was
answered survives kill -9. An image is named by its key and content hash, not by its index id,
which a rebuild may change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .data.database import Database, require_captions
from .data.records import Record, text_key

SUFFIX = ".marks.sqlite"
MAX_MARKS = 100_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS marks (
    query_key TEXT NOT NULL,      -- the query, case and spacing ignored (data.records.text_key)
    image_key TEXT NOT NULL,      -- the database's name for the image
    query TEXT NOT NULL,          -- as the user typed it (the last time)
    image_sha256 TEXT NOT NULL,   -- of the image's bytes when it was marked
    relevant INTEGER NOT NULL,    -- 1: what the query asked for; 0: not
    time REAL NOT NULL,           -- seconds since the epoch
    prompt_sha256 TEXT NOT NULL,  -- of the prompt file of the index that ranked it
    PRIMARY KEY (query_key, image_key)
)
"""


class MarksFull(ValueError):
    """The store holds MAX_MARKS marks already."""


@dataclass(frozen=True)
class Mark:
    query: str
    image_key: str
    image_sha256: str
    relevant: bool
    time: float
    prompt_sha256: str


def marks_path(index_dir: str | os.PathLike) -> Path:
    """Where the marks of the index in `index_dir` are kept: beside it."""
    index_dir = Path(index_dir)
    return index_dir.with_name(index_dir.name + SUFFIX)


class MarkStore:
    """The marks of one index. Thread-safe; one mark per (query, image), the latest kept."""

    def __init__(self, path: str | os.PathLike, *, max_marks: int = MAX_MARKS, create: bool = True):
        self.path, self.max_marks = Path(path), max_marks
        if not create and not self.path.is_file():
            raise ValueError(f"{self.path}: no marks here (marks are made on the search page of `dbprompt serve --feedback`)")
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)

    def add(self, query: str, image_key: str, image_sha256: str, relevant: bool, prompt_sha256: str) -> int:
        """Store (or replace) one mark; returns how many the store holds. Durable when it returns."""
        row = (text_key(query), image_key, query, image_sha256, int(relevant), time.time(), prompt_sha256)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count = self._count()
                exists = self._db.execute("SELECT 1 FROM marks WHERE query_key = ? AND image_key = ?", row[:2]).fetchone()
                if count >= self.max_marks and not exists:
                    raise MarksFull(f"this database holds {count:,} marks, the most it keeps; withdraw some first")
                self._db.execute("INSERT OR REPLACE INTO marks VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return count + (not exists)

    def withdraw(self, query: str, image_key: str) -> bool:
        """Remove the mark of (query, image); whether there was one."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM marks WHERE query_key = ? AND image_key = ?", (text_key(query), image_key))
            return cursor.rowcount > 0

    def count(self) -> int:
        with self._lock:
            return self._count()

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM marks").fetchone()[0])

    def queries(self) -> list[dict]:
        """Per query: its text, and how many images are marked relevant and irrelevant."""
        with self._lock:
            rows = self._db.execute(
                "SELECT MAX(query), SUM(relevant), SUM(1 - relevant) FROM marks GROUP BY query_key ORDER BY MAX(time) DESC"
            ).fetchall()
        return [{"query": q, "relevant": int(r), "irrelevant": int(i)} for q, r, i in rows]

    def marks(self, query: str | None = None) -> list[Mark]:
        """Every mark (or those of `query`), oldest first."""
        sql = "SELECT query, image_key, image_sha256, relevant, time, prompt_sha256 FROM marks"
        args: tuple = ()
        if query is not None:
            sql, args = sql + " WHERE query_key = ?", (text_key(query),)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY time", args).fetchall()
        return [Mark(q, k, h, bool(r), t, p) for q, k, h, r, t, p in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class MarkedRecords:
    """What a database's marks add to its records for training (see `apply_marks`)."""

    records: list[Record]  # captioned or marked relevant: the images to train on
    negatives: dict[str, list[Record]] = field(default_factory=dict)  # by text_key: images marked irrelevant
    relevant: int = 0
    irrelevant: int = 0
    queries: int = 0
    unknown: int = 0  # marks of images the database no longer has

    def summary(self) -> str:
        gone = f"; {self.unknown:,} of images the database no longer holds are left out" if self.unknown else ""
        return (
            f"{self.relevant + self.irrelevant:,} marks on {self.queries:,} queries: {self.relevant:,} relevant "
            f"(the query a caption of its image), {self.irrelevant:,} irrelevant (hard negatives){gone}"
        )


def apply_marks(records: Sequence[Record], marks: Sequence[Mark]) -> MarkedRecords:
    """Each image's captions and the queries marked relevant to it. Images with neither are left out:
    unmarked, they are unknown, not negatives. Each query's images marked irrelevant become its hard negatives."""
    by_key = {r.key: r for r in records}
    texts: dict[str, list[str]] = {}
    out = MarkedRecords([], queries=len({text_key(m.query) for m in marks}))
    for m in marks:
        record = by_key.get(m.image_key)
        if record is None:
            out.unknown += 1
        elif m.relevant:
            out.relevant += 1
            texts.setdefault(record.key, []).append(m.query)
        else:
            out.irrelevant += 1
            out.negatives.setdefault(text_key(m.query), []).append(record)
    for record in records:
        captions = {text_key(c): c for c in [*record.captions, *texts.get(record.key, [])]}
        if captions:
            out.records.append(dataclasses.replace(record, captions=tuple(captions.values())))
    return out


def with_marks(
    database: Database, feedback: str | os.PathLike | None, log: Callable[[str], None]
) -> tuple[Database, MarkedRecords | None]:
    """`database` with the marks kept beside index `feedback` in its records (a copy: a Database the caller
    passed stays as it was), or unchanged where there is no `feedback` and every image has a caption."""
    if feedback is None:
        require_captions(database, "training")
        return database, None
    with contextlib.closing(MarkStore(marks_path(feedback), create=False)) as store:
        marked = apply_marks(database.records, store.marks())
    if len(marked.records) < 2:
        raise ValueError(f"{marks_path(feedback)}: {marked.summary()}; training needs captions or marks on at least 2 images")
    log(f"marks from {marks_path(feedback)}: {marked.summary()}")
    return dataclasses.replace(database, records=marked.records), marked
