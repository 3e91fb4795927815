"""FAISS inner-product indexes over unit vectors: exact, IVF, HNSW or IVF-PQ re-ranked from vectors
on disk, with search effort tuned to a recall."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import knn_ground_truth

from .metadata import ImageRow
from .manifest import APPROX_THRESHOLD, IVFPQ_THRESHOLD, KINDS, RECALL_K
from .ondisk import FULL_VECTORS, RerankedIndex, chunks_of, map_full_vectors, read_chunks, write_full_vectors

# The approximate index's search effort is raised until recall@10 against exact reaches this.
RECALL_TARGET = 0.95
# ivfpq re-ranks up to 10 * MAX_K_FACTOR candidates (a disk read each when not in the page cache).
MAX_K_FACTOR = 64
# ivfpq's PQ has 4-bit codes, scanned with SIMD table lookups ("fast scan", about 4 ns a code on one
# core here); training its 16 centroids per sub-quantizer needs at least as many vectors.
PQ_CENTROIDS = 16


def first_non_finite(vectors: np.ndarray) -> int | None:
    """The first row holding NaN or Inf (FAISS would index it silently and rank it anywhere), or None."""
    bad = ~np.isfinite(vectors).all(axis=1)
    return int(bad.argmax()) if bad.any() else None


def require_finite(vectors: np.ndarray, what: str) -> None:
    row = first_non_finite(vectors)
    if row is not None:
        raise ValueError(f"{what} row {row} is not finite (NaN or Inf)")


def resolve_kind(kind: str, count: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        return "exact" if count <= APPROX_THRESHOLD else "ivf" if count <= IVFPQ_THRESHOLD else "ivfpq"
    return kind


def ivf_lists(count: int) -> int:
    """About sqrt(n) lists (a power of two), fewer when needed to leave 39 vectors per centroid to train."""
    nlist = 2 ** round(np.log2(max(1.0, np.sqrt(count))))
    return int(max(1, min(nlist, count // 39)))


def _training_rows(count: int, nlist: int, seed: int) -> np.ndarray:
    """A sample for k-means: 256 rows per list (FAISS's own cap), not the whole database.

    Poorly trained lists cost more at search (more lists probed for the same recall) than a
    larger sample costs once at build.
    """
    return np.sort(np.random.default_rng(seed).choice(count, min(count, 256 * nlist), replace=False))


def _train(index: faiss.Index, sample: np.ndarray, seed: int) -> None:
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = 10
    ivf.cp.seed = seed
    index.train(sample)


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
        _train(index, vectors[_training_rows(n, faiss.extract_index_ivf(index).nlist, seed)], seed)
    elif kind == "hnsw":
        index.hnsw.efConstruction = 80
    index.add(vectors)
    return index, factory


def pq_subquantizers(dim: int) -> int:
    """One 4-bit code per 8 dimensions (the largest divisor of dim up to dim / 8): 32 bytes for 512-d."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def make_ivfpq_index(
    directory: Path, chunks: Iterable[np.ndarray], count: int, *, seed: int = 0
) -> tuple[RerankedIndex, str]:
    """An IVF-PQ index over `count` unit vectors arriving in chunks, their full vectors written to
    `directory` for re-ranking, and its factory string.

    The training sample is taken as the chunks pass; codes are then added from the file read back
    a chunk at a time. Memory: the sample, one chunk and the codes.
    """
    if count < PQ_CENTROIDS:
        raise ValueError(f"an ivfpq index needs at least {PQ_CENTROIDS} vectors, got {count}; use the exact kind")
    nlist = ivf_lists(count)
    path = directory / FULL_VECTORS
    dim, sample = write_full_vectors(path, chunks, count, _training_rows(count, nlist, seed))
    factory = f"IVF{nlist},PQ{pq_subquantizers(dim)}x4fs"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    _train(index, sample, seed)
    del sample
    for chunk in read_chunks(path):
        index.add(chunk)
    return RerankedIndex(index, map_full_vectors(path, count, dim)), factory


def set_search_params(index: faiss.Index | RerankedIndex, params: dict[str, int]) -> None:
    for name, value in params.items():
        if int(value) < 1:
            raise ValueError(f"search parameter {name} must be at least 1, got {value}")
        if name == "nprobe":
            faiss.extract_index_ivf(index.base if isinstance(index, RerankedIndex) else index).nprobe = int(value)
        elif name == "efSearch":
            faiss.downcast_index(index).hnsw.efSearch = int(value)
        elif name == "k_factor" and isinstance(index, RerankedIndex):
            index.k_factor = int(value)
        else:
            raise ValueError(f"unknown search parameter {name!r}")


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top k that was found."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth)]))


def tune_search(
    index: faiss.Index | RerankedIndex,
    kind: str,
    vectors: np.ndarray | Iterable[np.ndarray],
    queries: np.ndarray,
    *,
    target: float = RECALL_TARGET,
) -> tuple[dict[str, int], float]:
    """The cheapest search effort whose recall@10 against exact search on `queries` reaches `target`.

    `vectors`: the indexed vectors, one array or chunks in order (exact search scans them chunk by
    chunk). Inputs are checked finite first: a recall measured on NaN vectors would mean nothing
    (chunks are the caller's to check).
    """
    if isinstance(vectors, np.ndarray):
        require_finite(vectors, "vectors")
        vectors = chunks_of(vectors)  # exact search copies what it scans: a chunk, not the whole array
    require_finite(queries, "tuning queries")
    k = min(RECALL_K, index.ntotal)
    if kind == "exact":
        return {}, 1.0
    truth = knn_ground_truth(queries, vectors, k, metric_type=faiss.METRIC_INNER_PRODUCT)[1]
    if kind == "hnsw":
        return _cheapest(index, "efSearch", 16, 4096, queries, truth, target)
    ivf = faiss.extract_index_ivf(index.base if isinstance(index, RerankedIndex) else index)
    if kind == "ivf":
        return _cheapest(index, "nprobe", 1, ivf.nlist, queries, truth, target)
    # ivfpq: the lists to probe with the deepest re-ranking, then the shallowest re-ranking that still does
    probe, _ = _cheapest(index, "nprobe", 1, ivf.nlist, queries, truth, target, {"k_factor": MAX_K_FACTOR})
    return _cheapest(index, "k_factor", 1, MAX_K_FACTOR, queries, truth, target, {"nprobe": probe["nprobe"]})


def _cheapest(
    index: faiss.Index | RerankedIndex, name: str, value: int, limit: int, queries: np.ndarray, truth: np.ndarray,
    target: float, fixed: dict[str, int] | None = None,
) -> tuple[dict[str, int], float]:
    """Double `name` from `value` until recall reaches `target` or `name` reaches `limit`."""
    while True:
        params = (fixed or {}) | {name: min(value, limit)}
        set_search_params(index, params)
        recall = recall_at_k(index.search(queries, truth.shape[1])[1], truth)
        if recall >= target or value >= limit:
            return params, recall
        value *= 2


def all_vectors(index: faiss.Index | RerankedIndex) -> np.ndarray:
    """Every stored vector, row i = id i (IVF lists need a direct map to give them back in order;
    ivfpq's are its float16 file on disk, mapped, not read)."""
    if isinstance(index, RerankedIndex):
        return index.full
    if index.ntotal == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def checked_chunks(vectors: np.ndarray | Iterable[np.ndarray], rows: Sequence[ImageRow]) -> Iterator[np.ndarray]:
    """The vectors a chunk at a time, each checked finite as it passes (the error names the image),
    and as many as `rows` in all."""
    start, dim = 0, None
    for chunk in chunks_of(vectors) if isinstance(vectors, np.ndarray) else vectors:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != (dim or chunk.shape[1]) or start + len(chunk) > len(rows):
            raise ValueError(f"vectors must come as 2-d chunks of one dimension, {len(rows)} rows in all, one per row")
        dim = chunk.shape[1]
        bad = first_non_finite(chunk)
        if bad is not None:
            raise ValueError(f"the vector of {rows[start + bad].key} is not finite (NaN or Inf); no index was written")
        start += len(chunk)
        yield chunk
    if start != len(rows):
        raise ValueError(f"got {start} vectors for {len(rows)} rows; no index was written")


def vectors_in_ram(vectors: np.ndarray | Iterable[np.ndarray], rows: Sequence[ImageRow]) -> np.ndarray:
    """All the vectors as one checked float32 array: an array as it is, chunks copied into one."""
    if isinstance(vectors, np.ndarray):
        for _ in checked_chunks(vectors, rows):
            pass
        return np.ascontiguousarray(vectors, dtype=np.float32)
    array = np.empty((0, 0), dtype=np.float32)
    start = 0
    for chunk in checked_chunks(vectors, rows):
        if start == 0:
            array = np.empty((len(rows), chunk.shape[1]), dtype=np.float32)
        array[start : start + len(chunk)] = chunk
        start += len(chunk)
    return array
