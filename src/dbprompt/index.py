"""Image indexes: one database embedded through its visual prompt, searchable without the database.

An index directory holds everything a search needs and says what made it:

    manifest.json        backbone, fingerprint, prompt sha256, index kind and parameters, count, dimension
    prompts.safetensors  a copy of the prompt file (searches use it; `serve` needs only the directory)
    vectors.faiss        L2-normalised image vectors; row i is image id i
    metadata.sqlite      one row per image: key, path, captions, file size, mtime, width, height

Building never touches a finished index in place: embeddings are checkpointed in chunks in a
work directory beside the output (so an interrupted run resumes), and the new index is
written aside and renamed over the old one. Re-running reuses the vectors of unchanged
images (same prompts, backbone, file size and mtime) and drops images that are gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import faiss
import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .atomic import atomic_dir, atomic_path, atomic_write_text
from .backbones import BackboneAdapter, load_backbone
from .data import Database, DataError, Record, load_database, open_image
from .embeddings import embed_images, embed_texts
from .model import PromptedCLIP
from .runtime import pick_device, resolve_bf16
from .storage import file_sha256, load_prompted_model, read_prompt_file

FORMAT = "dbprompt-index/1"
MANIFEST = "manifest.json"
PROMPTS = "prompts.safetensors"
VECTORS = "vectors.faiss"
METADATA = "metadata.sqlite"

KINDS = ("auto", "exact", "ivf", "hnsw")
# "auto" switches from exact search to IVF above this many images: on 2 CPU cores an exact scan
# of 100k 512-d vectors costs about as much as encoding the text query (BENCHMARKS.md, "Search").
APPROX_THRESHOLD = 50_000
# The approximate index's search effort is raised until recall@10 against exact reaches this.
RECALL_TARGET = 0.95
TUNE_QUERIES = 256
RECALL_K = 10


class IndexFormatError(ValueError):
    """An index directory that is missing, incomplete, or does not match what it is used with."""


@dataclass(frozen=True)
class IndexInfo:
    """The manifest of an index directory."""

    path: Path
    backbone: str
    pretrained: str | None
    fingerprint: str
    prompt_sha256: str
    kind: str
    factory: str
    count: int
    dim: int
    search_params: dict[str, int]
    recall_at_10: float
    database: str
    created: str
    last_build: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("path")
        return {"format": FORMAT, "dbprompt_version": __version__, **data}


def read_info(index_dir: str | os.PathLike) -> IndexInfo:
    path = Path(index_dir)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise IndexFormatError(f"{path}: not a dbprompt index (no {MANIFEST}); build one with `dbprompt index`")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"{manifest}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexFormatError(f"{manifest}: not a {FORMAT} manifest")
    data = {k: v for k, v in data.items() if k not in ("format", "dbprompt_version")}
    try:
        return IndexInfo(path=path, **data)
    except TypeError as exc:
        raise IndexFormatError(f"{manifest}: bad manifest: {exc}") from None


# ---- vector indexes ------------------------------------------------------------------------------


def resolve_kind(kind: str, count: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        return "ivf" if count > APPROX_THRESHOLD else "exact"
    return kind


def ivf_lists(count: int) -> int:
    """About sqrt(n) lists (a power of two), fewer when needed to leave 39 vectors per centroid to train."""
    nlist = 2 ** round(np.log2(max(1.0, np.sqrt(count))))
    return int(max(1, min(nlist, count // 39)))


def make_vector_index(vectors: np.ndarray, kind: str, *, seed: int = 0) -> tuple[faiss.Index, str]:
    """An inner-product index over `vectors` (rows must be unit length) and its factory string."""
    n, dim = vectors.shape
    if kind == "exact":
        factory = "Flat"
    elif kind == "ivf":
        factory = f"IVF{ivf_lists(n)},Flat"
    elif kind == "hnsw":
        factory = "HNSW32,Flat"
    else:
        raise ValueError(f"index kind must be one of {KINDS[1:]}, got {kind!r}")
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10
        ivf.cp.seed = seed
        # k-means needs a few dozen points per centroid, not the whole database.
        sample = min(n, 64 * ivf.nlist)
        rows = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
        index.train(vectors[rows])
    elif kind == "hnsw":
        index.hnsw.efConstruction = 80
    index.add(vectors)
    return index, factory


# The search-effort knob of each approximate kind, and the values tried, cheapest first.
_EFFORT = {"ivf": "nprobe", "hnsw": "efSearch"}


def set_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    for name, value in params.items():
        if name == "nprobe":
            faiss.extract_index_ivf(index).nprobe = int(value)
        elif name == "efSearch":
            faiss.downcast_index(index).hnsw.efSearch = int(value)
        else:
            raise IndexFormatError(f"unknown search parameter {name!r}")


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top k that was found."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth)]))


def tune_search(
    index: faiss.Index, kind: str, vectors: np.ndarray, queries: np.ndarray, *, target: float = RECALL_TARGET
) -> tuple[dict[str, int], float]:
    """The cheapest search effort whose recall@10 against exact search on `queries` reaches `target`."""
    k = min(RECALL_K, len(vectors))
    if kind == "exact":
        return {}, 1.0
    _, truth = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    name = _EFFORT[kind]
    limit = faiss.extract_index_ivf(index).nlist if kind == "ivf" else 4096
    value = 1 if kind == "ivf" else 16
    while True:
        params = {name: min(value, limit)}
        set_search_params(index, params)
        recall = recall_at_k(index.search(queries, k)[1], truth)
        if recall >= target or value >= limit:
            return params, recall
        value *= 2


def all_vectors(index: faiss.Index) -> np.ndarray:
    """Every stored vector, row i = id i (IVF lists need a direct map to give them back in order)."""
    if index.ntotal == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


# ---- metadata ------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY,      -- row in vectors.faiss
    key TEXT NOT NULL UNIQUE,    -- the database's name for the image
    path TEXT NOT NULL,          -- absolute path when indexed
    captions TEXT NOT NULL,      -- JSON list
    bytes INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL
)
"""


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

    @property
    def stamp(self) -> tuple[int, int]:
        return self.bytes, self.mtime_ns

    @classmethod
    def from_sql(cls, row: tuple) -> "ImageRow":
        id_, key, path, captions, size, mtime, width, height = row
        return cls(id_, key, Path(path), tuple(json.loads(captions)), size, mtime, width, height)


_COLUMNS = "id, key, path, captions, bytes, mtime_ns, width, height"


def _write_metadata(path: Path, rows: Sequence[ImageRow]) -> None:
    with sqlite3.connect(path) as db:
        db.execute(_SCHEMA)
        db.executemany(
            f"INSERT INTO images ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (r.id, r.key, str(r.path), json.dumps(list(r.captions)), r.bytes, r.mtime_ns, r.width, r.height)
                for r in rows
            ),
        )
    db.close()


def _connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)


# ---- searching -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    score: float
    image: ImageRow


class SearchIndex:
    """An opened index: vector search plus the metadata of the images it returns. Thread-safe."""

    def __init__(self, info: IndexInfo, vectors: faiss.Index, metadata: sqlite3.Connection):
        self.info = info
        self.vectors = vectors
        self._db = metadata
        self._db_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def prompt_file(self) -> Path:
        return self.info.path / PROMPTS

    def check_prompt_file(self, path: str | os.PathLike) -> None:
        """Refuse a prompt file other than the one the index was built with."""
        sha = file_sha256(path)
        if sha != self.info.prompt_sha256:
            raise IndexFormatError(
                f"{path}: this index ({self.info.path}) was built with prompt file sha256 "
                f"{self.info.prompt_sha256[:16]}…, not this one ({sha[:16]}…)"
            )

    def check_backbone(self, backbone: BackboneAdapter) -> None:
        """Refuse a backbone other than the one the index was built with."""
        if backbone.fingerprint() != self.info.fingerprint:
            raise IndexFormatError(
                f"{self.info.path}: built with backbone {self.info.backbone} (fingerprint {self.info.fingerprint}); "
                f"the loaded backbone {backbone.name} has fingerprint {backbone.fingerprint()}"
            )

    def search(self, query: np.ndarray, k: int = 10) -> list[Hit]:
        """The k nearest images to one unit-length query vector, best first."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.info.dim:
            raise ValueError(f"query has dimension {query.shape[1]}, the index {self.info.dim}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        scores, ids = self.vectors.search(query, min(k, self.info.count))
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        rows = self.rows([i for i, _ in found])
        return [Hit(s, rows[i]) for i, s in found]

    def rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._db_lock:
            result = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE id IN ({marks})", list(ids)).fetchall()
        return {row[0]: ImageRow.from_sql(row) for row in result}

    def row(self, image_id: int) -> ImageRow | None:
        return self.rows([image_id]).get(image_id)

    def all_rows(self) -> list[ImageRow]:
        with self._db_lock:
            result = self._db.execute(f"SELECT {_COLUMNS} FROM images ORDER BY id").fetchall()
        return [ImageRow.from_sql(row) for row in result]

    def close(self) -> None:
        with self._db_lock:
            self._db.close()


def open_index(index_dir: str | os.PathLike) -> SearchIndex:
    """Open an index for searching, after checking it is complete and consistent."""
    info = read_info(index_dir)
    for name in (PROMPTS, VECTORS, METADATA):
        if not (info.path / name).is_file():
            raise IndexFormatError(f"{info.path}: incomplete index, {name} is missing")
    if file_sha256(info.path / PROMPTS) != info.prompt_sha256:
        raise IndexFormatError(f"{info.path / PROMPTS}: does not match the sha256 recorded in {MANIFEST}")
    try:
        vectors = faiss.read_index(str(info.path / VECTORS))
    except RuntimeError as exc:
        raise IndexFormatError(f"{info.path / VECTORS}: unreadable FAISS index: {exc}") from None
    db = _connect_read_only(info.path / METADATA)
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
    set_search_params(vectors, info.search_params)
    return SearchIndex(info, vectors, db)


# ---- building ------------------------------------------------------------------------------------


@dataclass
class _Embedded:
    """What is known about one image's vector: the file state it was computed from."""

    stamp: tuple[int, int]
    size: tuple[int, int]
    vector: np.ndarray


class _WorkDir:
    """Checkpoints beside the output, locked against a second builder, valid for one prompt + backbone."""

    def __init__(self, out: Path, identity: dict[str, str]):
        self.out = out
        self.path = out.with_name(f".{out.name}.work")
        self.identity = identity
        self._lock_file = None
        self._chunks = 0

    def __enter__(self) -> "_WorkDir":
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path / "lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise OSError(f"{self.path}: another `dbprompt index` is writing this index") from None
        self._recover(self.out)
        state = self.path / "state.json"
        if not state.is_file() or json.loads(state.read_text()) != self.identity:
            for old in self.path.glob("chunk-*.npz"):
                old.unlink()
            atomic_write_text(state, json.dumps(self.identity))
        self._chunks = len(list(self.path.glob("chunk-*.npz")))
        return self

    def __exit__(self, *exc) -> None:
        self._lock_file.close()

    @staticmethod
    def _recover(out: Path) -> None:
        """Undo what a killed rename left behind: restore the old index if the new one never arrived."""
        old = out.with_name(f".{out.name}.old")
        if old.is_dir() and not out.exists():
            os.replace(old, out)
        for tmp in out.parent.glob(f".{out.name}.*.tmp"):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()

    def load(self) -> dict[str, _Embedded]:
        found: dict[str, _Embedded] = {}
        for chunk in sorted(self.path.glob("chunk-*.npz")):
            with np.load(chunk) as data:
                for key, stamp, size, vector in zip(data["keys"], data["stamps"], data["sizes"], data["vectors"]):
                    found[str(key)] = _Embedded(tuple(map(int, stamp)), tuple(map(int, size)), vector)
        return found

    def save(self, items: dict[str, _Embedded]) -> None:
        if not items:
            return
        with atomic_path(self.path / f"chunk-{self._chunks:06d}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                keys=np.array(list(items)),
                stamps=np.array([e.stamp for e in items.values()], dtype=np.int64),
                sizes=np.array([e.size for e in items.values()], dtype=np.int64),
                vectors=np.stack([e.vector for e in items.values()]),
            )
        self._chunks += 1

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _previous(out: Path, identity: dict[str, str]) -> tuple[IndexInfo | None, list[ImageRow], dict[str, _Embedded]]:
    """The existing index's rows, and its vectors when they were made with the same prompts and backbone."""
    try:
        index = open_index(out)
    except IndexFormatError:
        return None, [], {}
    try:
        info, rows = index.info, index.all_rows()
        if {"prompt_sha256": info.prompt_sha256, "fingerprint": info.fingerprint} != identity:
            return info, rows, {}
        vectors = all_vectors(index.vectors)
        return info, rows, {r.key: _Embedded(r.stamp, (r.width, r.height), vectors[r.id]) for r in rows}
    finally:
        index.close()


def _load_batch(records: Sequence[Record], transform, skip_bad: bool) -> tuple[list, list, list[str]]:
    """Decode and transform one batch; bad images raise, or are listed when skipping."""
    ok, tensors, bad = [], [], []
    for record in records:
        try:
            image = open_image(record.path)
        except DataError as exc:
            if not skip_bad:
                raise
            bad.append(str(exc))
            continue
        ok.append((record, image.size))
        tensors.append(transform(image))
    return ok, tensors, bad


def _prefetched(batches: list[Sequence[Record]], transform, skip_bad: bool) -> Iterator[tuple[list, list, list[str]]]:
    """Decode the next batch in a thread while the model encodes the current one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[Future] = deque()
        for batch in batches:
            pending.append(pool.submit(_load_batch, batch, transform, skip_bad))
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _embed(
    model: PromptedCLIP,
    todo: list[Record],
    stamps: dict[str, tuple[int, int]],
    work: _WorkDir,
    *,
    batch_size: int,
    device: str,
    bf16: bool,
    skip_bad: bool,
    checkpoint_every: int,
    progress: bool,
) -> tuple[dict[str, _Embedded], list[str]]:
    """Embed `todo`, checkpointing every `checkpoint_every` images (and on the way out of an error)."""
    transform = model.backbone.image_transform()
    done: dict[str, _Embedded] = {}
    pending: dict[str, _Embedded] = {}
    skipped: list[str] = []
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(todo), unit="img", desc="embedding", disable=not progress or not todo)
    try:
        for ok, tensors, bad in _prefetched(batches, transform, skip_bad):
            skipped += bad
            if ok:
                vectors = embed_images(model, torch.stack(tensors), device, bf16)
                for (record, size), vector in zip(ok, vectors):
                    pending[record.key] = _Embedded(stamps[record.key], size, vector)
            bar.update(len(ok) + len(bad))
            if len(pending) >= checkpoint_every:
                work.save(pending)
                done.update(pending)
                pending = {}
    finally:
        work.save(pending)
        bar.close()
    done.update(pending)
    return done, skipped


def _tuning_queries(model: PromptedCLIP, records: Sequence[Record], device: str, bf16: bool) -> np.ndarray | None:
    """Caption vectors: the real query distribution, modality gap included (None without captions)."""
    rng = np.random.default_rng(0)
    picks = rng.choice(len(records), min(TUNE_QUERIES, len(records)), replace=False)
    captions = [records[i].captions[rng.integers(len(records[i].captions))] for i in picks if records[i].captions]
    if not captions:
        return None
    return np.concatenate([embed_texts(model, captions[i : i + 64], device, bf16) for i in range(0, len(captions), 64)])


def _check_replaceable(out: Path) -> None:
    """An index directory is replaced as a whole: never let that be anything but an index."""
    if out.exists() and not (out / MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise IndexFormatError(f"{out}: exists and is not a dbprompt index; refusing to replace it")


def write_index(
    out_dir: str | os.PathLike,
    prompt_file: str | os.PathLike,
    vectors: np.ndarray,
    rows: Sequence[ImageRow],
    *,
    kind: str = "auto",
    tune_queries: np.ndarray | None = None,
    database: str = "",
    last_build: dict[str, object] | None = None,
) -> IndexInfo:
    """Write an index directory from unit vectors (row i of `vectors` is image `rows[i]`), atomically.

    An approximate index is tuned on `tune_queries` (default: a sample of the vectors themselves).
    """
    if len(vectors) != len(rows) or any(row.id != i for i, row in enumerate(rows)):
        raise ValueError("rows must be numbered 0..n-1, one per vector")
    out, pf = Path(out_dir), read_prompt_file(prompt_file)
    _check_replaceable(out)
    resolved = resolve_kind(kind, len(rows))
    index, factory = make_vector_index(vectors, resolved)
    if tune_queries is None:
        sample = np.random.default_rng(0).choice(len(vectors), min(TUNE_QUERIES, len(vectors)), replace=False)
        tune_queries = vectors[sample]
    params, recall = tune_search(index, resolved, vectors, tune_queries)
    info = IndexInfo(
        path=out,
        backbone=pf.backbone,
        pretrained=pf.pretrained,
        fingerprint=pf.fingerprint,
        prompt_sha256=file_sha256(prompt_file),
        kind=resolved,
        factory=factory,
        count=len(rows),
        dim=int(vectors.shape[1]),
        search_params=params,
        recall_at_10=round(recall, 4),
        database=database,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        last_build=last_build or {},
    )
    with atomic_dir(out) as tmp:
        shutil.copyfile(prompt_file, tmp / PROMPTS)
        faiss.write_index(index, str(tmp / VECTORS))
        _write_metadata(tmp / METADATA, rows)
        atomic_write_text(tmp / MANIFEST, json.dumps(info.to_json(), indent=2) + "\n")
    return info


def build_index(
    db: str | os.PathLike | Database,
    prompt_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    kind: str = "auto",
    device: str = "auto",
    bf16: bool | None = None,
    skip_bad: bool = False,
    backbone: BackboneAdapter | None = None,
    checkpoint_every: int = 1024,
    progress: bool = True,
) -> IndexInfo:
    """Create or update the index of `db` (a path or a loaded Database) searched through `prompt_file`.

    Only new or changed images are embedded; a run interrupted at any point resumes where
    its last checkpoint ended, and `out_dir` is either the old index or the new one, never a mix.
    """
    if batch_size < 1 or checkpoint_every < 1:
        raise ValueError("batch_size and checkpoint_every must be at least 1")
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    out, prompt_file = Path(out_dir), Path(prompt_file)
    _check_replaceable(out)
    pf = read_prompt_file(prompt_file)
    database = db if isinstance(db, Database) else load_database(db, skip_bad=skip_bad)
    device = pick_device(device)
    bf16 = resolve_bf16(device, bf16)
    if backbone is None:
        backbone = load_backbone(pf.backbone, pf.pretrained, device=device)
    model = load_prompted_model(prompt_file, backbone, device=device)
    identity = {"prompt_sha256": file_sha256(prompt_file), "fingerprint": backbone.fingerprint()}
    records = database.records
    stamps = {r.key: _stamp(r.path) for r in records}

    with _WorkDir(out, identity) as work:
        old_info, old_rows, known = _previous(out, identity)
        known.update(work.load())
        todo = [r for r in records if r.key not in known or known[r.key].stamp != stamps[r.key]]
        fresh, skipped = _embed(
            model, todo, stamps, work, batch_size=batch_size, device=device, bf16=bf16,
            skip_bad=skip_bad, checkpoint_every=checkpoint_every, progress=progress,
        )
        known.update(fresh)
        kept = [r for r in records if r.key in known and known[r.key].stamp == stamps[r.key]]
        if not kept:
            raise DataError(str(database.source), "no usable images", "; ".join(skipped[:3]))
        rows = [
            ImageRow(i, r.key, r.path, r.captions, *stamps[r.key], *known[r.key].size) for i, r in enumerate(kept)
        ]
        resolved = resolve_kind(kind, len(rows))
        if old_info is not None and not todo and rows == old_rows and old_info.kind == resolved:
            work.remove()
            return old_info  # nothing changed
        vectors = np.stack([known[r.key].vector for r in kept]).astype(np.float32, copy=False)
        queries = _tuning_queries(model, kept, device, bf16) if resolved != "exact" else None
        gone = {r.key for r in old_rows} - {r.key for r in rows}
        info = write_index(
            out, prompt_file, vectors, rows, kind=resolved, tune_queries=queries, database=str(database.source),
            last_build={
                "embedded": len(fresh),
                "reused": len(rows) - len(fresh),
                "removed": len(gone),
                "skipped": skipped + [str(item) for item in database.report.items],
            },
        )
        work.remove()
    return info
