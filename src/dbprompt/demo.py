"""`dbprompt demo`: a user's whole day, offline, on the built-in synthetic database."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .backbones import RANDOM, shipped_weights
from .data import load_database
from .world import write_database

# The demo's backbone: the pre-trained proxy when the package ships one, else a tiny random model.
PROXY = "dbprompt-proxy"
FALLBACK = "dbprompt-tiny"
# Captions in words the proxy barely saw in pre-training: the case prompts + vocabulary are for.
DOMAIN = "textual"


def _run(argv: list[str]) -> None:
    from .cli import main

    print(f"\n$ dbprompt {shlex.join(argv)}", flush=True)
    code = main(argv)
    if code:
        raise SystemExit(code)


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
    prompts = work / "prompts.safetensors"
    runtime = ["--device", args.device, "--batch-size", str(args.batch_size)]
    if args.bf16 is not None:
        runtime.append("--bf16" if args.bf16 else "--no-bf16")
    train = ["train", str(db), "--out", str(prompts), "--model", model, *runtime]
    if args.epochs:
        train += ["--epochs", str(args.epochs)]
    if shipped_weights(model) is None:
        train += ["--pretrained", RANDOM]
    _run(train)
    _run(["eval", str(db), "--prompts", str(prompts), *runtime])
    print(f"\nprompt file: {prompts} ({prompts.stat().st_size:,} bytes); the backbone itself is unchanged")
    index = work / "index"
    _run(["index", str(db), "--prompts", str(prompts), "--out", str(index), "--device", args.device])
    serve = ["serve", str(index), "--port", str(args.port)]
    if args.serve:
        _run(serve)
    else:
        query = load_database(db).records[0].captions[0]  # a description the database does hold
        print(f"\nsearch it:  dbprompt search {shlex.quote(str(index))} {shlex.quote(query)}")
        print(f"web page:   dbprompt {shlex.join(serve)}   then open http://127.0.0.1:{args.port}/")
    sys.stdout.flush()
    return 0
