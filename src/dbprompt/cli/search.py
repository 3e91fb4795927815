"""`dbprompt index`, `dbprompt search` and `dbprompt serve`."""

from __future__ import annotations

import argparse

from ..data.database import ReadOptions
from ..index.manifest import APPROX_THRESHOLD, IVFPQ_THRESHOLD, KINDS
from .common import add_database_args, add_model_args, add_output_args, add_runtime_args, emit, message, options_of, progress_of, runtime_of


def register(sub: argparse._SubParsersAction) -> None:
    _register_index(sub)
    _register_search(sub)
    _register_serve(sub)


def _register_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="embed a database's images into a searchable index",
        description=(
            "Embed every image of DB through the visual prompt of --prompts into INDEX_DIR (FAISS vectors, "
            "SQLite metadata, a manifest and a copy of the prompt file); without --prompts, zero-shot through "
            "--model's own features, to search before training anything. Re-running embeds only new or "
            "changed images and drops deleted ones; an interrupted run resumes."
        ),
    )
    add_database_args(p, from_prompts=True)
    p.add_argument("--prompts", metavar="FILE", help="prompt file trained for this database (unset: a zero-shot index of --model)")
    p.add_argument("--out", required=True, metavar="INDEX_DIR", help="index directory to create or update")
    p.add_argument(
        "--kind", choices=KINDS, default="auto",
        help=(
            "exact (inner product); ivf or hnsw (approximate, vectors in RAM); ivfpq (approximate, compressed "
            f"codes in RAM, full vectors on disk); auto: exact up to {APPROX_THRESHOLD:,} images, ivf up to "
            f"{IVFPQ_THRESHOLD:,}, then ivfpq"
        ),
    )
    p.add_argument("--force", action="store_true", help="replace an index of another database, prompt file or backbone")
    g = p.add_argument_group("Ray (pip install 'dbprompt[ray]')")
    g.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="embed on Ray actors: of a local instance without ADDRESS, else of the cluster at ADDRESS (auto, HOST:PORT); "
        "give it after DB, or as --ray=ADDRESS",
    )
    g.add_argument("--ray-workers", type=int, default=None, metavar="N", help="Ray actors (default: one per GPU of the cluster, else one per CPU)")
    add_model_args(p, required=False, recorded=True)
    add_runtime_args(p, engine=True)
    p.add_argument(
        "--precision", choices=("auto", "fp32", "int8"), default="auto",
        help="with --runtime onnx, the image tower's: auto takes int8 only where its top-10 agrees with fp32's on 95%% "
        "of this database's own images (measured once, logged, kept in the manifest) (default: auto)",
    )
    add_output_args(p)
    p.set_defaults(func=run_index)


def _register_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search an index by text or by image",
        description="Search INDEX_DIR with a text QUERY (through the database's textual prompt) or --image PATH.",
    )
    p.add_argument("index_dir", metavar="INDEX_DIR")
    p.add_argument("query", metavar="QUERY", nargs="?", help="text to search for")
    p.add_argument("--image", metavar="PATH", help="search with this image instead of text")
    p.add_argument("-k", type=int, default=10, help="number of results (default: 10)")
    p.add_argument("--folder", metavar="FOLDER", help="only images in FOLDER (relative to the indexed folder; '' its top)")
    p.add_argument("--tag", metavar="TAG", help="only images with TAG (from the database's tags column)")
    p.add_argument("--prompts", metavar="FILE", help="refuse to search unless the index was built with FILE")
    add_model_args(p, required=False, recorded=True)
    add_runtime_args(p, batch_size=False, engine=True)
    add_output_args(p, progress=False)
    p.set_defaults(func=run_search)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve indexes over HTTP: JSON API and a search page",
        description=(
            "Serve one or more indexes: a search page at /, the JSON API under /api, OpenAPI docs at /docs. "
            "One backbone is loaded and shared; each database searches through its own prompts."
        ),
    )
    p.add_argument(
        "index_dirs", metavar="[NAME=]INDEX_DIR", nargs="+",
        help="an index directory, served under its folder's name, or under NAME (letters, digits, '.', '_', '-')",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image upload accepted (default: 10)")
    p.add_argument(
        "--feedback", action="store_true",
        help="let users mark results relevant or not (kept beside each index as INDEX_DIR.marks.sqlite, for "
        "`dbprompt train --feedback`); off by default, since the server has no authentication",
    )
    add_model_args(p, required=False, recorded=True)
    add_runtime_args(p, batch_size=False, engine=True)
    p.set_defaults(func=run_serve)


def run_index(args: argparse.Namespace) -> int:
    from ..api import build_index

    info = build_index(
        args.db, args.prompts, args.out, kind=args.kind, batch_size=args.batch_size, runtime=runtime_of(args),
        progress=progress_of(args), log=message, model=args.model, pretrained=args.pretrained, force=args.force,
        ray=args.ray, ray_workers=args.ray_workers, onnx_precision=args.precision, **options_of(args, ReadOptions, skip_none=True),
    )
    build = info.last_build
    for problem in build.get("skipped", []):
        message(f"skipped: {problem}")
    emit(
        args, {"index": str(info.path)} | info.to_json(),
        f"{info.path}: {info.count} images, {info.kind} index ({info.factory}, recall@10 {info.recall_at_10:.3f}); "
        f"embedded {build.get('embedded', 0)}, reused {build.get('reused', 0)}, removed {build.get('removed', 0)}",
    )
    return 0


def run_search(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..searcher import open_index

    if (args.query is None) == (args.image is None):
        raise ValueError("give either a text QUERY or --image PATH")
    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    runtime = query_runtime(args)
    backbone = named_backbone(args, runtime)
    with open_index(args.index_dir, prompt_file=args.prompts, runtime=runtime, backbone=backbone) as searcher:
        hits = searcher.search(Path(args.image) if args.image is not None else args.query, args.k, folder=args.folder, tag=args.tag)
        note = searcher.missing_note(hits)
    if note:
        message(f"note: {note}")
    rows = [
        {"rank": i, "score": round(h.score, 6), "id": h.image.id, "key": h.image.key, "path": str(h.image.path),
         "captions": list(h.image.captions), "tags": list(h.image.tags)}
        for i, h in enumerate(hits, 1)
    ]
    emit(args, {"index": args.index_dir, "query": args.query, "image": args.image, "results": rows, "missing": hits.missing}, _table(rows))
    return 0


def query_runtime(args: argparse.Namespace):
    """The runtime of `search` and `serve`; with --runtime onnx and no --model nor --bf16 one that imports no torch,
    so that indexes whose export holds all a query needs are searched on ONNX Runtime alone (searcher.py)."""
    from ..runtime import Runtime

    if args.engine == "onnx" and args.model is None and not args.bf16:
        return Runtime.for_onnx_queries(args.device, args.workers)
    return runtime_of(args)


def named_backbone(args: argparse.Namespace, runtime):
    """The backbone --model/--pretrained name, or None: each index's recorded one (local weights only)."""
    if args.model is None:
        if args.pretrained is not None:
            raise ValueError("--pretrained needs --model")
        return None
    from ..backbones import load_named_backbone

    return load_named_backbone(args.model, args.pretrained, device=runtime.device)


def _table(rows: list[dict]) -> str:
    """rank, score, key and first caption, each column as wide as its content."""
    header = ("#", "score", "image", "caption")
    cells = [(str(r["rank"]), f"{r['score']:.4f}", r["key"], (r["captions"] or [""])[0]) for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(3)]
    lines = ["  ".join(c[i].ljust(widths[i]) if i < 3 else c[i] for i in range(4)).rstrip() for c in [header, *cells]]
    return "\n".join(lines)


def _named(spec: str) -> str | tuple[str, str]:
    """NAME=DIR as (NAME, DIR); a directory that exists is itself even with a '=' in its name."""
    from pathlib import Path

    name, sep, index_dir = spec.partition("=")
    return (name, index_dir) if sep and not Path(spec).exists() else spec


def run_serve(args: argparse.Namespace) -> int:
    from ..server import serve

    if args.max_upload_mb <= 0:
        raise ValueError("--max-upload-mb must be positive")
    runtime = query_runtime(args)
    serve(
        [_named(spec) for spec in args.index_dirs], host=args.host, port=args.port, runtime=runtime, backbone=named_backbone(args, runtime),
        max_upload_bytes=int(args.max_upload_mb * 2**20), feedback=args.feedback,
    )
    return 0
