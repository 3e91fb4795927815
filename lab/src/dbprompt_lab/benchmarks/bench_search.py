"""Search benchmarks, every ratio measured side by side in one run.

1. Indexing: `build_index` images/s (decode, transform, prompted encoder, FAISS, SQLite) and the
   prompted encoder alone, against the backbone's own `encode_image` on the same tensors.
2. Query text encoding, one query at a time: the backbone's own text tower, dbprompt train's
   default prompts (gated: two passes) in fp32 and bf16, and ungated prompts (`--no-gate`).
3. Vector search over 100k and 1M random unit vectors: exact (IndexFlatIP) against IVF (and,
   up to 200k, HNSW) tuned for recall@10 >= 0.95, recall measured on held-out queries. Two distributions: uniform on
   the sphere (no structure, the worst case for any partitioning index) and clustered (the
   neighbourhood structure real embeddings have).
4. End to end at 100k: `Searcher.search_text` on an index directory written by `write_index`
   (text encoding + FAISS + SQLite metadata of the 10 hits + a stat of each hit's file, all present),
   distinct queries so no cache helps.

Parts 1, 2 and 4 run for each backbone of --models: ViT-B-32 (random weights: the size users
run) and dbprompt-proxy (the shipped model the demo uses).

Usage: python -m dbprompt_lab.benchmarks.bench_search [--models ViT-B-32 dbprompt-proxy] [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import faiss
import numpy as np
import torch
from PIL import Image

from dbprompt.backbones import BackboneAdapter, load_backbone
from dbprompt.data import load_database, open_image
from dbprompt.index import ImageRow, build_index, write_index
from dbprompt.index.vectors import make_vector_index, recall_at_k, tune_search
from dbprompt.model import PromptedCLIP
from dbprompt.pipeline import embed_images, encode_texts
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import Runtime
from dbprompt.searcher import open_index
from dbprompt_lab.world import generate, write_database

DIM = 512
K = 10
HNSW_MAX = 200_000
# Vectors in the end-to-end indexes (part 4).
END_TO_END = 100_000


def percentiles(seconds: list[float]) -> str:
    p50, p99 = np.percentile(np.array(seconds) * 1000, [50, 99])
    return f"{p50:.2f} | {p99:.2f}"


def timed(fn: Callable[..., object], items: Iterable) -> list[float]:
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - start)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def uniform(rng: np.random.Generator, n: int, _centres: np.ndarray) -> np.ndarray:
    return unit(rng.standard_normal((n, DIM), dtype=np.float32))


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    """Around random centres, cos(point, centre) ~ 0.71: near neighbours exist, as in real embeddings."""
    picks = rng.integers(len(centres), size=n)
    dim = centres.shape[1]
    noise = rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    return unit(centres[picks] + noise)


def bench_indexing(root: Path, model: PromptedCLIP, prompts: Path, n: int, batch: int, runtime: Runtime) -> list[str]:
    db = write_database(root / "db", n, image_size=64)
    backbone = model.backbone
    transform = backbone.image_transform()
    pixels = torch.stack([transform(open_image(r.path)) for r in load_database(db).records])
    batches = list(torch.split(pixels, batch))

    def own(x: torch.Tensor) -> None:
        with torch.no_grad(), runtime.autocast():
            backbone.encode_image(x)

    own(batches[0])  # warm-up
    t_own = sum(timed(own, batches))
    t_prompted = sum(timed(lambda x: embed_images(model, x, runtime), batches))
    start = time.perf_counter()
    build_index(db, prompts, root / "idx", batch_size=batch, backbone=backbone, runtime=runtime, progress=False)
    t_index = time.perf_counter() - start
    rate = {name: n / t for name, t in (("own", t_own), ("prompted", t_prompted), ("index", t_index))}
    return [
        "| measured | images/s | ratio to backbone `encode_image` |",
        "|---|---:|---:|",
        f"| backbone's own `encode_image` (unprompted) | {rate['own']:.1f} | 1.00 |",
        f"| prompted `encode_image` (visual prompt) | {rate['prompted']:.1f} | {rate['prompted'] / rate['own']:.2f} |",
        f"| `build_index` end to end | {rate['index']:.1f} | {rate['index'] / rate['own']:.2f} |",
    ]


def bench_text(models: dict[str, PromptedCLIP], queries: list[str], runtime: Runtime) -> tuple[list[str], float]:
    """p50/p99 per (model, precision); returns the lines and the default prompts' p50 as resolved."""
    lines = ["| text encoder | precision | p50 ms | p99 ms |", "|---|---|---:|---:|"]
    resolved = runtime.bf16
    p50 = 0.0
    for label, model in models.items():
        for bf16 in (False, True) if label.startswith("default") else (resolved,):
            at = runtime.replace(bf16=bf16)
            encode_texts(model, queries[:3], at)  # warm-up
            seconds = timed(lambda q: encode_texts(model, [q], at), queries)
            precision_label = ("bf16 autocast" if bf16 else "fp32") + (" (as resolved)" if bf16 == resolved else "")
            lines.append(f"| {label} | {precision_label} | {percentiles(seconds)} |")
            if label.startswith("default") and bf16 == resolved:
                p50 = float(np.percentile(seconds, 50))
    return lines, p50


def bench_vectors(sizes: list[int], n_queries: int, text_p50: float) -> list[str]:
    lines = [
        "| vectors | distribution (mean cos of true 1st / 10th neighbour) | index | search params | p50 ms | p99 ms "
        "| recall@10 | build + tune s |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for n in sizes:
        for name, make in (("uniform", uniform), ("clustered", clustered)):
            rng = np.random.default_rng(n)
            centres = unit(rng.standard_normal((max(1, n // 100), DIM), dtype=np.float32))
            vectors = make(rng, n, centres)
            tune_q, test_q = make(rng, 256, centres), make(rng, n_queries, centres)
            cos, truth = faiss.knn(test_q, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)
            described = f"{name} ({cos[:, 0].mean():.2f} / {cos[:, -1].mean():.2f})"
            for kind in ("exact", "ivf", "hnsw"):
                if kind == "hnsw" and n > HNSW_MAX:
                    continue  # building the graph takes tens of minutes on 2 cores
                # As the product runs: `dbprompt index` builds on every core, searchers use one thread.
                faiss.omp_set_num_threads(os.cpu_count() or 1)
                start = time.perf_counter()
                index, factory = make_vector_index(vectors, kind)
                params, _ = tune_search(index, kind, vectors, tune_q)
                built = time.perf_counter() - start
                faiss.omp_set_num_threads(1)
                seconds = timed(lambda q, index=index: index.search(q[None], K), test_q)
                recall = recall_at_k(index.search(test_q, K)[1], truth)
                cells = [f"{n:,}", described, factory, str(params or "-"), percentiles(seconds)]
                cells += [f"{recall:.3f}", f"{built:.1f}"]
                lines.append("| " + " | ".join(cells) + " |")
                del index
                gc.collect()
            del vectors
            gc.collect()
    lines.append("")
    lines.append(f"Add the text encoding (p50 {text_p50 * 1000:.1f} ms, as resolved) for a text query's total.")
    return lines


def linked_files(folder: Path, n: int) -> list[Path]:
    """`n` image files that exist, as hard links to one: the searcher skips hits whose files are gone,
    so rows pointing nowhere would measure a collection that was moved away (several rounds a query)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:07d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        if i % 60_000 == 0:  # a file holds at most 65,000 links on ext4
            Image.new("RGB", (8, 8)).save(path)
            first = path
        else:
            os.link(first, path)
    return paths


def bench_end_to_end(
    root: Path, prompts: Path, queries: list[str], n: int, dim: int, runtime: Runtime, backbone: BackboneAdapter
) -> list[str]:
    rng = np.random.default_rng(1)
    centres = unit(rng.standard_normal((n // 100, dim), dtype=np.float32))
    vectors = clustered(rng, n, centres)
    rows = [
        ImageRow(i, f"images/{i:07d}.png", path, (f"caption {i}",), 1000, 0, 224, 224, "0" * 64)
        for i, path in enumerate(linked_files(root / "e2e-images", n))
    ]
    lines = ["| index | search params | recall@10 (tuning) | p50 ms | p99 ms |", "|---|---|---:|---:|---:|"]
    for kind in ("exact", "ivf", "hnsw"):
        info = write_index(root / f"e2e-{kind}", prompts, vectors, rows, kind=kind)
        searcher = open_index(info.path, runtime=runtime, backbone=backbone)  # random weights: named, not recorded
        searcher.search_text("warm-up query", K)
        seconds = timed(lambda q: searcher.search_text(q, K), queries)
        cells = [info.factory, str(info.search_params or "-"), f"{info.recall_at_10:.3f}", percentiles(seconds)]
        lines.append("| " + " | ".join(cells) + " |")
        searcher.close()
    return lines


def bench_backbone(name: str, root: Path, args: argparse.Namespace, queries: list[str], runtime: Runtime) -> float:
    """Indexing, text encoding and end-to-end search for one backbone; returns the text p50 (s)."""
    backbone = load_backbone(name)
    vocabulary = [c for _, caps in generate(args.images, seed=3, image_size=16) for c in caps]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = PromptedCLIP.for_captions(backbone, PromptConfig(), vocabulary).eval()
    own = PromptedCLIP(backbone, PromptConfig.none()).eval()
    prompts = model.save_prompt_file(root / f"{name}.safetensors")
    report(f"{name}: indexing", bench_indexing(root / name, model, prompts, args.images, args.batch_size, runtime))
    encoders = {
        "backbone's own (no prompts)": own,
        "default prompts (deep, gated, vocabulary)": model,
    }
    lines, text_p50 = bench_text(encoders, queries, runtime)
    report(f"{name}: query text encoding, one query", lines)
    dim = model.encode_texts(["x"]).shape[1]
    e2e = bench_end_to_end(root / name, prompts, queries, END_TO_END, dim, runtime, backbone)
    report(f"{name}: end to end at {END_TO_END // 1000}k, `Searcher.search_text`, k=10", e2e)
    return text_p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="images to index (default: 256)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="queries per latency measurement")
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "dbprompt-proxy"])
    args = parser.parse_args()

    # As the product resolves it: bf16 where the CPU pays off, image-decoding workers beside the model.
    runtime = Runtime.resolve("cpu")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (CPU used)"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), faiss {faiss.__version__}; bf16 resolved to {runtime.bf16}, "
        f"{runtime.workers} image-decoding worker(s); "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        captions = (c for _, caps in generate(args.queries, seed=7, image_size=16) for c in caps)
        queries = list(dict.fromkeys(captions))[: args.queries]  # distinct: no query cache helps
        text_p50 = {name: bench_backbone(name, root, args, queries, runtime) for name in args.models}
        report("Vector search, single query, k=10", bench_vectors(args.sizes, args.queries, text_p50[args.models[0]]))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end (other processes share these 2 cores)")


def report(title: str, lines: list[str]) -> None:
    print(f"\n### {title}\n\n" + "\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
