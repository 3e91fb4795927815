"""An opened index: vector search plus the metadata of the images it returns.

The vectors and metadata need no database; `keep` lets a caller drop hits whose file is gone
(the Searcher does), `where` narrows the search to some images (a folder, a tag), and `offset` pages
past the first hits: the search reaches further so that k hits remain where it can.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePath
from typing import Callable, Sequence

import faiss
import numpy as np

from ..compat import file_sha256
from .manifest import METADATA, PROMPTS, VECTORS, IndexFormatError, IndexInfo, read_info
from .metadata import UNTAGGED_COLUMNS, ImageRow, columns_of, connect_read_only
from .ondisk import FULL_VECTORS, RerankedIndex, map_full_vectors
from .vectors import set_search_params

# How far past k a search may reach to replace hits `keep` drops (deleted images).
MAX_EXTRA = 1024
# How far a filtered search may reach for k images that pass its filter: a folder or tag rarer than that
# among the best this many gets fewer than k (each round reads its rows' metadata).
MAX_FILTERED_REACH = 200_000


@dataclass(frozen=True)
class Hit:
    score: float
    image: ImageRow


class Hits(list):
    """One query's hits, best first. `missing`: how many better-ranked images `keep` refused (files that are
    gone); most of them missing means the collection is not where it was indexed (a drive not mounted)."""

    missing: int = 0

    @property
    def mostly_missing(self) -> bool:
        return self.missing > 0 and self.missing >= len(self)


class SearchIndex:
    """Vectors and metadata of one index directory. Thread-safe."""

    def __init__(self, info: IndexInfo, vectors: faiss.Index | RerankedIndex, metadata: sqlite3.Connection):
        self.info = info
        self.vectors = vectors
        self._db = metadata
        self._db_lock = threading.Lock()
        self._columns = columns_of(metadata)  # an index made before tags were kept has none

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def prompt_file(self) -> Path:
        return self.info.path / PROMPTS

    @property
    def root(self) -> Path:
        """The folder every indexed image resolved inside when it was indexed."""
        return Path(self.info.root)

    def search(
        self, query: np.ndarray, k: int = 10, keep: Callable[[ImageRow], bool] | None = None, *, offset: int = 0,
        where: Callable[[ImageRow], bool] | None = None,
    ) -> Hits:
        """The k nearest images to one unit-length query vector after the first `offset`, best first (only
        those `where` and `keep` accept; `keep` refusing counts as missing, `where` does not).

        Refused rows widen the search (at most to offset + k + MAX_EXTRA, or MAX_FILTERED_REACH with `where`),
        but only while most rows pass `keep`: where most are refused, the files are not where they were, and
        a second round says so as well as eight would."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.info.dim:
            raise ValueError(f"query has dimension {query.shape[1]}, the index {self.info.dim}")
        if not np.isfinite(query).all():
            raise ValueError("the query vector is not finite (NaN or Inf)")
        if k < 1 or offset < 0:
            raise ValueError(f"k must be at least 1 and offset at least 0, got k={k}, offset={offset}")
        want = offset + k
        cap = min(self.info.count, max(want, MAX_FILTERED_REACH) if where else want + MAX_EXTRA)
        reach = min(want, self.info.count)
        while True:
            scores, ids = self.vectors.search(query, reach)
            found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
            rows = self.rows([i for i, _ in found])
            hits, passed = Hits(), 0
            for i, s in found:
                if where is not None and not where(rows[i]):
                    continue
                if keep is None or keep(rows[i]):
                    passed += 1
                    if passed > offset:
                        hits.append(Hit(s, rows[i]))
                    if passed == want:
                        break
                else:
                    hits.missing += 1
            if passed >= want or reach >= cap or (reach > want and 0 < hits.missing >= passed):
                return hits
            reach = min(2 * reach, cap)

    def folder_of(self, row: ImageRow) -> str:
        """The folder of an image relative to the index's root ("" for the root itself; a shard member's is its shard's)."""
        return self._folder(row.path)

    def _folder(self, path: PurePath) -> str:
        try:
            relative = path.parent.relative_to(self.root).as_posix()
        except ValueError:  # indexed outside the root it records: named in full
            return path.parent.as_posix()
        return "" if relative == "." else relative

    @cached_property
    def folders(self) -> dict[str, int]:
        """Images per folder, in folder order (read once: an index never changes under an open SearchIndex)."""
        with self._db_lock:
            paths = self._db.execute("SELECT path FROM images").fetchall()
        counts = Counter(self._folder(PurePath(p)) for (p,) in paths)
        return dict(sorted(counts.items()))

    @cached_property
    def tags(self) -> dict[str, int]:
        """Images per tag, most frequent first, then by name ({} for an index made before tags were kept)."""
        if self._columns == UNTAGGED_COLUMNS:
            return {}
        with self._db_lock:
            lists = self._db.execute("SELECT tags FROM images WHERE tags != '[]'").fetchall()
        counts = Counter(tag for (tags,) in lists for tag in json.loads(tags))
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def sample_captions(self, n: int) -> list[str]:
        """Up to n distinct first captions spread over the index (by id), for a page to suggest as queries."""
        count = self.info.count
        ids = sorted({round(i * (count - 1) / max(1, 4 * n - 1)) for i in range(min(count, 4 * n))})
        seen: dict[str, None] = {}
        rows = self.rows(ids)
        for i in ids:
            if rows[i].captions:
                seen.setdefault(rows[i].captions[0], None)
        return list(seen)[:n]

    def rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        return {row[0]: ImageRow.from_sql(row) for row in self._select_in(self._columns, "id", ids)}

    def row(self, image_id: int) -> ImageRow | None:
        return self.rows([image_id]).get(image_id)

    def ids_of(self, keys: Sequence[str]) -> dict[str, int]:
        """The ids of those of `keys` this index holds (a rebuild may give an image another id)."""
        return dict(self._select_in("key, id", "key", keys))

    def _select_in(self, columns: str, column: str, values: Sequence[object]) -> list[tuple]:
        """`columns` of the images whose `column` is one of `values`, asked in parts under SQLite's limit on bound parameters."""
        found: list[tuple] = []
        for start in range(0, len(values), 500):
            part = list(values[start : start + 500])
            with self._db_lock:
                found += self._db.execute(f"SELECT {columns} FROM images WHERE {column} IN ({','.join('?' * len(part))})", part).fetchall()
        return found

    def all_rows(self) -> list[ImageRow]:
        with self._db_lock:
            result = self._db.execute(f"SELECT {self._columns} FROM images ORDER BY id").fetchall()
        return [ImageRow.from_sql(row) for row in result]

    def close(self) -> None:
        with self._db_lock:
            self._db.close()


def load_index(index_dir: str | os.PathLike) -> SearchIndex:
    """Open an index's vectors and metadata, after checking the directory is complete and consistent."""
    info = read_info(index_dir)
    for name in (PROMPTS, VECTORS, METADATA) + ((FULL_VECTORS,) if info.kind == "ivfpq" else ()):
        if not (info.path / name).is_file():
            raise IndexFormatError(f"{info.path}: incomplete index, {name} is missing")
    if file_sha256(info.path / PROMPTS) != info.prompt_sha256:
        raise IndexFormatError(f"{info.path / PROMPTS}: does not match the sha256 recorded in its manifest")
    try:
        vectors = faiss.read_index(str(info.path / VECTORS))
    except RuntimeError as exc:
        raise IndexFormatError(f"{info.path / VECTORS}: unreadable FAISS index: {exc}") from None
    if info.kind == "ivfpq":
        if faiss.try_extract_index_ivf(vectors) is None:
            raise IndexFormatError(f"{info.path / VECTORS}: an ivfpq index holds no IVF index")
        vectors = RerankedIndex(vectors, map_full_vectors(info.path / FULL_VECTORS, info.count, info.dim))
    db = connect_read_only(info.path / METADATA)
    try:
        (rows,) = db.execute("SELECT COUNT(*) FROM images").fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()
        raise IndexFormatError(f"{info.path / METADATA}: unreadable metadata: {exc}") from None
    if not (vectors.ntotal == rows == info.count) or vectors.d != info.dim:
        db.close()
        raise IndexFormatError(
            f"{info.path}: inconsistent index: {vectors.ntotal} vectors of dimension {vectors.d}, "
            f"{rows} metadata rows, manifest says {info.count} of dimension {info.dim}"
        )
    try:
        set_search_params(vectors, info.search_params)
    except ValueError as exc:
        db.close()
        raise IndexFormatError(f"{info.path}: {exc}") from None
    return SearchIndex(info, vectors, db)
