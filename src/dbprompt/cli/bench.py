"""`dbprompt bench methods`: the like-for-like method comparison on the proxy world."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..atomic import atomic_write_text
from ..methods import COMPARED, METHODS

START, END = "<!-- methods:start -->", "<!-- methods:end -->"
# Rows the targets are checked for: the paper's method, dbprompt train's defaults, and
# (when asked for with --methods) those defaults with a validation-chosen learning rate.
TARGET_METHODS = ("textual+visual", "dbprompt", "textual+visual+vocab")


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench import BenchConfig

    d = BenchConfig()
    p = sub.add_parser("bench", help="method comparison on the proxy world", description="Benchmarks that compare tuning methods like for like.")
    bench_sub = p.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    m = bench_sub.add_parser("methods", help="zero-shot, prompts, full FT, LoRA, projection-only on shifted targets", description="Train and test every method on each shifted target database, N training pairs, several seeds; resumable.")
    m.add_argument("--out", default="runs/methods", help="data, per-run results and results.json (default: %(default)s)")
    m.add_argument("--model", default=d.model)
    m.add_argument("--pretrained", default=None, help="the model's weights: an open_clip tag or a checkpoint file (default: those dbprompt ships)")
    m.add_argument("--shifts", nargs="+", default=list(d.shifts))
    m.add_argument("--sizes", nargs="+", type=int, default=list(d.sizes))
    m.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    m.add_argument("--methods", nargs="+", default=list(COMPARED), choices=list(METHODS), help="default: %(default)s")
    m.add_argument("--epochs", nargs="+", default=[f"{n}:{e}" for n, e in d.epochs.items()], help="epoch budget per size, SIZE:EPOCHS (default: %(default)s)")
    m.add_argument("--val-images", type=int, default=d.val_images)
    m.add_argument("--test-images", type=int, default=d.test_images)
    m.add_argument("--device", default=d.device)
    m.add_argument("--jobs", type=int, default=None, help="runs in parallel, one thread each (default: one per CPU core on a CPU, 1 on a GPU)")
    m.add_argument("--report-only", action="store_true", help="summarise the runs saved so far; train nothing")
    m.add_argument("--benchmarks-md", default=None, help="write the table into this Markdown file between markers")
    m.set_defaults(func=cmd_methods)


def cmd_methods(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, default_jobs, markdown, run, summarize, targets

    epochs = dict(tuple(int(v) for v in item.split(":")) for item in args.epochs)
    missing = [n for n in args.sizes if n not in epochs]
    if missing:
        raise ValueError(f"no epoch budget for sizes {missing}: add --epochs SIZE:EPOCHS")
    cfg = BenchConfig(
        model=args.model,
        pretrained=args.pretrained,
        shifts=tuple(args.shifts),
        sizes=tuple(args.sizes),
        seeds=tuple(args.seeds),
        methods=tuple(args.methods),
        val_images=args.val_images,
        test_images=args.test_images,
        epochs=epochs,
        device=args.device,
    )
    jobs = args.jobs if args.jobs is not None else default_jobs(cfg.device)
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    rows = run(cfg, args.out, jobs=jobs, train=not args.report_only)
    summary = summarize(rows, cfg)
    table = markdown(summary, cfg)
    lines = [line for method in TARGET_METHODS if method in cfg.methods for line in targets(summary, method)]
    print(table)
    print("\n".join(lines))
    if args.benchmarks_md:
        write_section(Path(args.benchmarks_md), table + "\n\n" + "\n".join(f"- {line}" for line in lines))
    return 0


def write_section(path: Path, body: str) -> None:
    """Replace the text between the markers (or append them), leaving the rest of the file alone."""
    text = path.read_text() if path.exists() else ""
    block = f"{START}\n{body}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, text)
