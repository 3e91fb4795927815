"""Full vectors on disk, for the ivfpq kind: IVF-PQ codes in RAM pick candidates, exact inner
products with the vectors on disk re-rank them.

The vectors are one float16 `.npy` file, row i = image id i, written chunk by chunk and read back
chunk by chunk while building (plain reads: the build's resident memory stays one chunk, not the
file), and memory-mapped while searching, where a query reads only its candidates' rows. float16
halves the disk and page cache a vector takes and moves the inner product of two unit vectors by
about 1e-3 at most, far less than what separates neighbours.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterable, Iterator

import faiss
import numpy as np

from .manifest import RECALL_K, IndexFormatError

FULL_VECTORS = "vectors.f16.npy"
# Rows read, converted or added at a time: 64 MiB of float16 at 512-d.
CHUNK_ROWS = 65_536
_DTYPE = np.dtype("<f2")


def chunks_of(vectors: np.ndarray, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """An array, in RAM or memory-mapped, `rows` at a time."""
    for start in range(0, len(vectors), rows):
        yield vectors[start : start + rows]


def write_full_vectors(path: Path, chunks: Iterable[np.ndarray], count: int, sample: np.ndarray) -> tuple[int, np.ndarray]:
    """Write `count` rows arriving in float32 chunks of one dimension to `path` as float16; returns
    the dimension and the rows numbered `sample` (sorted), picked up on the way: training needs no
    second pass."""
    picked: list[np.ndarray] = []
    start, dim = 0, 0
    with open(path, "wb") as f:
        for chunk in chunks:
            if start == 0:
                dim = chunk.shape[1]
                header = {"descr": np.lib.format.dtype_to_descr(_DTYPE), "fortran_order": False, "shape": (count, dim)}
                np.lib.format.write_array_header_1_0(f, header)
            f.write(chunk.astype(_DTYPE).tobytes())
            lo, hi = np.searchsorted(sample, [start, start + len(chunk)])
            picked.append(chunk[sample[lo:hi] - start])
            start += len(chunk)
    if start != count:
        raise ValueError(f"got {start} vectors for {count} rows")
    return dim, np.concatenate(picked)


def _header(f) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a `.npy` file declares (bounded: an index may come from anyone)."""
    version = np.lib.format.read_magic(f)
    if version != (1, 0):
        raise ValueError(f".npy format version {version}, written by something other than dbprompt")
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    if fortran:
        raise ValueError("stored in Fortran order")
    return shape, dtype


def read_chunks(path: Path, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """The file's rows in order, `rows` at a time, as float32."""
    with open(path, "rb") as f:
        (count, dim), _ = _header(f)
        for start in range(0, count, rows):
            size = min(rows, count - start)
            yield np.fromfile(f, dtype=_DTYPE, count=size * dim).reshape(size, dim).astype(np.float32)


def map_full_vectors(path: Path, count: int, dim: int) -> np.ndarray:
    """The file as a read-only (count, dim) float16 array backed by the page cache, not by RAM."""
    try:
        with open(path, "rb") as f:
            shape, dtype = _header(f)
            offset = f.tell()
            if shape != (count, dim) or dtype != _DTYPE:
                raise ValueError(f"holds {shape} {dtype}, the index {(count, dim)} float16")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_RANDOM"):
            mapped.madvise(mmap.MADV_RANDOM)  # one candidate row at a time: read-ahead would only waste I/O
        return np.frombuffer(mapped, dtype=_DTYPE, count=count * dim, offset=offset).reshape(count, dim)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path}: unreadable full vectors: {exc}") from None


class RerankedIndex:
    """An IVF-PQ index whose k * k_factor best candidates are re-scored exactly from the full vectors.

    k_factor is tuned for k = 10, so a smaller k re-ranks as many candidates as k = 10 does.
    Answers `search` as a FAISS index does (scores, ids; -1 where fewer than k were found).
    """

    def __init__(self, base: faiss.Index, full: np.ndarray, k_factor: int = 1):
        self.base = base
        self.full = full
        self.k_factor = k_factor

    @property
    def ntotal(self) -> int:
        return self.base.ntotal

    @property
    def d(self) -> int:
        return self.base.d

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, candidates = self.base.search(queries, min(self.ntotal, max(k, RECALL_K) * self.k_factor))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for i, (query, found) in enumerate(zip(queries, candidates)):
            found = np.sort(found[found >= 0])  # rows read in file order
            exact = self.full[found].astype(np.float32) @ query
            best = np.argsort(-exact, kind="stable")[:k]
            scores[i, : len(best)], ids[i, : len(best)] = exact[best], found[best]
        return scores, ids
