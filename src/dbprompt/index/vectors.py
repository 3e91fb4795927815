"""FAISS inner-product indexes over unit vectors: exact, IVF or HNSW, with search effort tuned to a recall."""

from __future__ import annotations

import faiss
import numpy as np

from .manifest import APPROX_THRESHOLD, KINDS

# The approximate index's search effort is raised until recall@10 against exact reaches this.
RECALL_TARGET = 0.95
RECALL_K = 10
# The search-effort knob of each approximate kind.
_EFFORT = {"ivf": "nprobe", "hnsw": "efSearch"}


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


def set_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    for name, value in params.items():
        if name == "nprobe":
            faiss.extract_index_ivf(index).nprobe = int(value)
        elif name == "efSearch":
            faiss.downcast_index(index).hnsw.efSearch = int(value)
        else:
            raise ValueError(f"unknown search parameter {name!r}")


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top k that was found."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth)]))


def tune_search(
    index: faiss.Index, kind: str, vectors: np.ndarray, queries: np.ndarray, *, target: float = RECALL_TARGET
) -> tuple[dict[str, int], float]:
    """The cheapest search effort whose recall@10 against exact search on `queries` reaches `target`.

    Both inputs are checked finite first: a recall measured on NaN vectors would mean nothing.
    """
    require_finite(vectors, "vectors")
    require_finite(queries, "tuning queries")
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
