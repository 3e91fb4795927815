"""`dbprompt-lab demo`: a user's whole day, offline, on a synthetic database, through dbprompt's Python API."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import dbprompt
from dbprompt.backbones import RANDOM, shipped_weights
from dbprompt.metrics import format_table
from dbprompt.runtime import Runtime

from .world import write_database

# The demo's backbone: the pre-trained proxy when the package ships one, else a tiny random model.
PROXY = "dbprompt-proxy"
FALLBACK = "dbprompt-tiny"
# Captions in words the proxy barely saw in pre-training: the case prompts + vocabulary are for.
DOMAIN = "textual"
TABLE_KEYS = tuple(f"clip_benchmark/{k}" for k in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1"))


def run_demo(args: argparse.Namespace) -> int:
    work = Path(args.dir)
    model = args.model or (PROXY if shipped_weights(PROXY) else FALLBACK)
    if model == FALLBACK:
        print(
            f"note: the demo runs on {FALLBACK}, a tiny open_clip model with RANDOM weights "
            "(no pre-trained backbone is available offline), so absolute recall is low; "
            "what it shows is the pipeline and the gain prompts give over zero-shot."
        )
    db = work / "database"
    if not (db / "metadata.jsonl").exists():
        print(f"writing a synthetic database of {args.images} images ({DOMAIN} domain) to {db}")
        write_database(db, args.images, domain=DOMAIN, seed=0, image_size=64)
    runtime = Runtime.resolve(args.device, args.bf16)
    prompts = work / "prompts.safetensors"
    options = {"epochs": args.epochs} if args.epochs else {}
    print(f"\n>>> dbprompt.train({str(db)!r}, {str(prompts)!r}, model={model!r})")
    trained = dbprompt.train(
        db, prompts, model=model, pretrained=None if shipped_weights(model) else RANDOM, runtime=runtime, force=True,
        **options,
    )
    print(f"best epoch {trained.best_epoch} (0 = before training), validation T2I R@1 {trained.best_metric:.1f}")
    print(f"\n>>> dbprompt.evaluate({str(db)!r}, {str(prompts)!r})")
    report = dbprompt.evaluate(db, prompts, runtime=runtime)
    print(f"{report.split} split: {report.images} images, {report.captions} captions")
    print(format_table(list(report.rows.items()), TABLE_KEYS))
    print(f"\nprompt file: {prompts} ({prompts.stat().st_size:,} bytes); the backbone itself is unchanged")
    index = work / "index"
    print(f"\n>>> dbprompt.build_index({str(db)!r}, {str(prompts)!r}, {str(index)!r})")
    info = dbprompt.build_index(db, prompts, index, runtime=runtime, force=True)  # a re-run replaces its own
    print(f"{info.path}: {info.count} images, {info.kind} index")
    query = dbprompt.load_database(db).records[0].captions[0]  # a description the database does hold
    with dbprompt.open_index(index, runtime=runtime) as searcher:
        hits = searcher.search(query, k=3)
    print(f"\n>>> dbprompt.open_index({str(index)!r}).search({query!r}, k=3)")
    for hit in hits:
        print(f"  {hit.score:.3f}  {hit.image.key}  {hit.image.captions[0]}")
    serve = ["dbprompt", "serve", str(index), "--port", str(args.port)]
    if args.serve:
        from dbprompt.server import serve as run_server

        run_server([index], port=args.port, runtime=runtime)
    else:
        print(f"\nsearch it:  dbprompt search {shlex.quote(str(index))} {shlex.quote(query)}")
        print(f"web page:   {shlex.join(serve)}   then open http://127.0.0.1:{args.port}/")
    return 0
