"""An index of N synthetic vectors, built and searched through the product's code path.

Clustered 512-d unit vectors (bench_search's `clustered`: clusters of 100, cos ~0.71 to their
centre) are generated chunk by chunk from a fixed seed and streamed into `write_index`, which
never sees them all at once; exact top-10 neighbours of held-out queries are computed from the
same chunks as they pass (a chunked scan, before any rounding to float16). Then the index is
opened with `load_index` and searched one query at a time on one thread.

Prints: the kind `auto` (or --kind) chose, its factory and tuned search parameters; recall@10 on
the held-out queries; p50/p99 of the vector search alone and of `SearchIndex.search` (vectors +
the SQLite rows of the hits); the build's peak RSS, anonymous (sampled) and total (the kernel's
lifetime peak, which counts the pages of mapped files too), imports included (shown apart);
build time without the time spent generating vectors; disk size.

Usage: python -m dbprompt_lab.benchmarks.bench_bigindex --n 1000000 [--kind auto] [--queries 500] [--threads 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Sequence

import faiss
import numpy as np

from dbprompt.index import KINDS, ImageRow, load_index, write_index
from dbprompt.index.ondisk import CHUNK_ROWS
from dbprompt.index.vectors import recall_at_k
from dbprompt_lab.benchmarks.bench_search import DIM, K, clustered, percentiles, timed, unit

CLUSTER = 100  # vectors per cluster, as in bench_search
NOWHERE, DIGEST = Path("/nowhere/image.jpg"), "0" * 64
# Random-stream numbers under --seed: centres, tuning queries, held-out queries, then one per chunk.
CENTRES, TUNING, HELD_OUT, FIRST_CHUNK = range(4)


class SyntheticRows(Sequence[ImageRow]):
    """Metadata rows made on demand (10M ImageRow objects would take gigabytes of their own), all
    with one path: a Path per row would cost more time than the SQLite insert."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        i %= self.n
        return ImageRow(i, f"images/{i:08d}.jpg", NOWHERE, (), 1000, 0, 224, 224, DIGEST)


class Stream:
    """The database's vectors, chunk by chunk; each chunk also updates the held-out queries' exact top k."""

    def __init__(self, n: int, seed: int, queries: int):
        self.n, self.seed = n, seed
        self.centres = unit(self.rng(CENTRES).standard_normal((max(1, n // CLUSTER), DIM), dtype=np.float32))
        self.tuning = clustered(self.rng(TUNING), 256, self.centres)
        self.held_out = clustered(self.rng(HELD_OUT), queries, self.centres)
        self.truth = faiss.ResultHeap(queries, K, keep_max=True)
        self.seconds = 0.0  # spent here, not in the index build

    def rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])

    def __iter__(self) -> Iterator[np.ndarray]:
        for number, start in enumerate(range(0, self.n, CHUNK_ROWS)):
            began = time.perf_counter()
            rng, size = self.rng(FIRST_CHUNK + number), min(CHUNK_ROWS, self.n - start)
            # In slices: generating a whole chunk at once would take several chunks' worth of RAM.
            chunk = np.concatenate([clustered(rng, len(s), self.centres) for s in np.array_split(range(size), 8)])
            scores, ids = faiss.knn(self.held_out, chunk, K, metric=faiss.METRIC_INNER_PRODUCT)
            self.truth.add_result(scores, ids + start)
            self.seconds += time.perf_counter() - began
            yield chunk


def make_prompt_file(path: Path) -> Path:
    """Default prompts on ViT-B-32 (random weights, 512-d): they only fill the manifest here."""
    from dbprompt.backbones import load_backbone
    from dbprompt.model import PromptedCLIP
    from dbprompt.prompts import PromptConfig

    return PromptedCLIP(load_backbone("ViT-B-32"), PromptConfig(vocab=0)).save_prompt_file(path)


def resident() -> tuple[float, float]:
    """GiB resident now: anonymous memory (the process's own) and mapped files (page cache, reclaimable)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["RssAnon"].split()[0]) / 2**20, int(status["RssFile"].split()[0]) / 2**20


def peak_rss() -> float:
    """GiB: the kernel's lifetime peak of the total, mapped file pages included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class PeakAnonymous:
    """The highest anonymous RSS seen, sampled every 0.1 s (the kernel keeps a peak of the total only)."""

    def __init__(self):
        self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            self.peak = max(self.peak, resident()[0])

    def __enter__(self) -> "PeakAnonymous":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def bench(args: argparse.Namespace, root: Path) -> None:
    prompts = args.prompts
    if prompts is None:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # the backbone's RAM stays out of ours
            prompts = pool.submit(make_prompt_file, root / "prompts.safetensors").result()
    stream = Stream(args.n, args.seed, args.queries)
    before = resident()[0]
    faiss.omp_set_num_threads(args.threads)
    began = time.perf_counter()
    with PeakAnonymous() as anonymous:
        info = write_index(
            root / "index", prompts, stream, SyntheticRows(args.n), kind=args.kind, tune_queries=stream.tuning,
            root="/nowhere",
        )
    wall = time.perf_counter() - began
    build_peak = peak_rss()
    stream.truth.finalize()

    faiss.omp_set_num_threads(1)  # as `dbprompt search` and `serve` run it
    began = time.perf_counter()
    index = load_index(info.path)
    opened = time.perf_counter() - began
    queries = stream.held_out
    vector_s = timed(lambda q: index.vectors.search(q[None], K), queries)
    search_s = timed(lambda q: index.search(q, K), queries)
    recall = recall_at_k(index.vectors.search(queries, K)[1], stream.truth.I)
    anon, mapped = resident()
    index.close()
    disk = {p.name: p.stat().st_size / 2**30 for p in info.path.iterdir()}

    print(f"\n{args.n:,} vectors: {info.kind} ({info.factory}), search params {info.search_params}, "
          f"recall@10 {info.recall_at_10:.3f} on the 256 tuning queries")
    print("| vectors | index | search params | recall@10 | p50 ms | p99 ms | with metadata p50 ms | p99 ms "
          "| build s | build peak RSS GiB: anonymous / total | disk GiB |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    cells = [
        f"{args.n:,}", info.factory, str(info.search_params or "-"), f"{recall:.3f}", percentiles(vector_s),
        percentiles(search_s), f"{wall - stream.seconds:.0f}", f"{anonymous.peak:.2f} / {build_peak:.2f}",
        f"{sum(disk.values()):.2f}",
    ]
    print("| " + " | ".join(cells) + " |")
    print(f"\nrecall@10 on {len(queries)} held-out queries against an exact scan of the float32 vectors")
    print(f"build: {wall:.0f} s wall, of which {stream.seconds:.0f} s generating vectors and exact neighbours "
          f"(not counted above); opening the index: {opened:.1f} s")
    print(f"anonymous RSS before the build {before:.2f} GiB (imports, generator); after searching {anon:.2f} GiB "
          f"anonymous + {mapped:.2f} GiB mapped files (libraries, the pages of the index's vectors read so far)")
    print("disk: " + ", ".join(f"{name} {size:.3f} GiB" for name, size in sorted(disk.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the index (default: 1,000,000)")
    parser.add_argument("--kind", choices=KINDS, default="auto", help="index kind (default: auto, as `dbprompt index`)")
    parser.add_argument("--queries", type=int, default=500, help="held-out queries (default: 500)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="FAISS threads building (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="where to build (default: a temporary directory, removed after)")
    parser.add_argument("--prompts", type=Path, help="prompt file for the manifest (default: made on ViT-B-32)")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB; "
        f"faiss {faiss.__version__}; {args.threads} build thread(s), searches on 1; load average "
        f"{os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bench(args, Path(tmp))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
