"""`dbprompt-lab`: the lab's commands: the demo, the proxy backbone, and the method comparison."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from dbprompt.atomic import atomic_write_text
from dbprompt.runtime import Runtime

from . import proxy
from .methods import COMPARED, METHODS, RETIRED
from .swap_negatives import parse_share
from .world.samples import WORLDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbprompt-lab", description="The lab beside dbprompt: synthetic world, proxy backbone, method comparison."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_demo(sub)
    register_proxy(sub)
    register_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"dbprompt-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2


def register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a user's whole day offline on a synthetic database", description="Build a synthetic database, evaluate zero-shot, train prompts, evaluate again, and index it for search, through dbprompt's Python API.")
    p.add_argument("--dir", default=".demo", help="working directory (default: %(default)s)")
    p.add_argument("--images", type=int, default=600, help="images in the synthetic database")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: dbprompt train's)")
    p.add_argument("--model", default=None, help="backbone (default: the shipped proxy)")
    p.add_argument("--serve", action="store_true", help="start the web server at the end")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def register_proxy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("proxy", help="pre-train or check a proxy backbone", description="The proxy backbones: small open_clip CLIPs pre-trained on the synthetic world (dbprompt-proxy, shipped with dbprompt; dbprompt-proxy-b, shipped with the lab).")
    proxy_sub = p.add_subparsers(dest="proxy_command", required=True, metavar="ACTION")
    first = proxy.PROXIES[proxy.NAME]
    models = ", ".join(f"{m.name}: {m.images}" for m in proxy.PROXIES.values())
    pre = proxy_sub.add_parser("pretrain", help="pre-train from random (or given) weights (resumable)", description="Pre-train a proxy on a world's source domain and write its fp16 weights and record into the work directory.")
    pre.add_argument("--model", default=proxy.NAME, choices=list(proxy.PROXIES), help="(default: %(default)s)")
    pre.add_argument("--world", default=None, choices=list(WORLDS), help="the world whose source domain it learns (default: the model's: proxy for dbprompt-proxy, broad for dbprompt-proxy-b)")
    pre.add_argument("--work-dir", default="runs/proxy", help="data and checkpoints (default: %(default)s)")
    pre.add_argument("--images", type=int, default=None, help=f"source images to write (default: the model's recipe, {models})")
    pre.add_argument("--epochs", type=int, default=None, help=f"(default: the model's recipe, {first.recipe.epochs} for {first.name})")
    pre.add_argument("--batch-size", type=int, default=None, help=f"(default: the model's recipe, {first.recipe.batch_size} for {first.name})")
    pre.add_argument("--lr", type=float, default=None, help=f"(default: the model's recipe, {first.recipe.lr} for {first.name})")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--hard-negatives", type=int, default=0, metavar="K", help="batches made of runs of K look-alike images (captions sharing most words); 0: random batches (default: %(default)s)")
    pre.add_argument("--loss", default=None, choices=["sigmoid", "contrastive"], help="(default: the model's: contrastive for dbprompt-proxy, sigmoid for dbprompt-proxy-b)")
    pre.add_argument("--swap-negatives", default=None, metavar="ATTR=SHARE,...", help="each caption's word for an attribute (drawn by share, e.g. shape=0.7,size=0.3) swapped for another: one more negative of its image (default: none)")
    pre.add_argument("--twins", action="store_true", help="shape twins: source images in pairs alike but for one shape's kind, each pair in one batch, so that every step asks the image tower for shapes")
    pre.add_argument("--init", default=None, metavar="WEIGHTS", help=f"start from a weights file, a pre-training checkpoint or '{proxy.SHIPPED}' (the model's shipped weights) instead of random weights")
    pre.add_argument("--checkpoint-every", type=int, default=None, help="optimizer steps between checkpoints (default: the model's recipe)")
    pre.add_argument("--image-cache-mb", type=int, default=None, help="memory for decoded training images (default: the model's recipe)")
    pre.add_argument("--device", default="auto")
    pre.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    pre.add_argument("--workers", type=int, default=None, help="image-decoding worker processes")
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar (--no-progress: epoch lines only, for logs)")
    pre.add_argument("--out", default=None, help="weights file (default: WORK_DIR/MODEL.safetensors; to ship them, copy it and its .record.json where the model's config is: src/dbprompt/assets/models/ for dbprompt-proxy, lab/src/dbprompt_lab/models/ for dbprompt-proxy-b)")
    pre.set_defaults(func=cmd_pretrain)
    chk = proxy_sub.add_parser("check", help="re-measure a shipped proxy's source R@1", description="Regenerate the held-out source test set and compare T2I R@1 with the recorded value.")
    chk.add_argument("--model", default=proxy.NAME, choices=list(proxy.PROXIES), help="(default: %(default)s)")
    chk.add_argument("--work-dir", default="runs/proxy")
    chk.add_argument("--device", default="auto")
    chk.set_defaults(func=cmd_check)


def cmd_pretrain(args: argparse.Namespace) -> int:
    recipe = proxy.get_proxy(args.model).recipe
    given = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "checkpoint_every": args.checkpoint_every,
        "image_cache_mb": args.image_cache_mb,
    }
    cfg = replace(recipe, seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    swap = parse_share(args.swap_negatives) if args.swap_negatives else None
    record = proxy.pretrain(
        args.work_dir,
        model=args.model,
        world=args.world,
        images=args.images,
        cfg=cfg,
        hard_negatives=args.hard_negatives,
        loss=args.loss,
        swap_negatives=swap,
        twins=args.twins,
        init=args.init,
        runtime=Runtime.resolve(args.device, args.bf16, args.workers),
        resume=args.resume,
        out=Path(args.out) if args.out else None,
        progress=args.progress,
    )
    m = record["source_test_metrics"]
    print(f"source test T2I R@1 {m['clip_benchmark/t2i_R@1']:.1f}, I2T R@1 {m['clip_benchmark/i2t_R@1']:.1f}")
    if "proxy_world_test_metrics" in record:
        print(f"zero-shot on the proxy world's source test: T2I R@1 {record['proxy_world_test_metrics']['clip_benchmark/t2i_R@1']:.1f}")
    seen = ", ".join(f"{attribute} {share:.2f}" for attribute, share in record["attribute_probe"].items())
    print(f"true caption over a one-word swap (0.5: blind): {seen}")
    linear = ", ".join(f"{a} {r['accuracy']:.2f} ({r['chance']:.2f})" for a, r in record["linear_probe"].items())
    print(f"linear classifier on image features, held-out accuracy (chance): {linear}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    recorded, now = proxy.check(args.work_dir, model=args.model, runtime=Runtime.resolve(args.device))
    print(f"{args.model} source test T2I R@1: recorded {recorded:.1f}, now {now:.1f}")
    return 0 if abs(recorded - now) <= 1.0 else 1


START, END = "<!-- methods:start -->", "<!-- methods:end -->"


def markers(model: str) -> tuple[str, str]:
    """The start and end markers of a model's table: the first proxy's as they always were, any other's named by it."""
    return (START, END) if model == proxy.NAME else (f"<!-- methods:{model}:start -->", f"<!-- methods:{model}:end -->")


# Rows the targets are checked for: the paper's method and dbprompt train's defaults.
TARGET_METHODS = ("textual+visual", "dbprompt")


def register_bench(sub: argparse._SubParsersAction) -> None:
    from .bench import BenchConfig

    d = BenchConfig()
    p = sub.add_parser("bench", help="method comparison on a proxy's world", description="Benchmarks that compare tuning methods like for like.")
    bench_sub = p.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    m = bench_sub.add_parser("methods", help="zero-shot, prompts, full FT, LoRA, projection-only on shifted targets", description="Train and test every method on each shifted target database, N training pairs, several seeds; resumable.")
    m.add_argument("--out", default="runs/methods", help="data, per-run results and results.json; another world's in OUT/WORLD (default: %(default)s)")
    m.add_argument("--model", default=d.model, help="(default: %(default)s; dbprompt-proxy-b is measured on the broad world at 96 px)")
    m.add_argument("--pretrained", default=None, help="the model's weights: an open_clip tag, a weights file, a pre-training checkpoint or 'random' (default: those shipped for it)")
    m.add_argument("--shifts", nargs="+", default=None, help=f"(default: the model's world's shifted domains: {' '.join(d.shifts)} on the proxy world's)")
    m.add_argument("--sizes", nargs="+", type=int, default=list(d.sizes))
    m.add_argument("--pool", type=int, default=d.pool, help="training images each shift holds; every size draws its images from it, so a size's runs are the same whatever other sizes a command asks for (default: %(default)s)")
    m.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    m.add_argument("--methods", nargs="+", default=list(COMPARED), choices=list(METHODS) + list(RETIRED), metavar="METHOD", help="of the comparison or a sweep in experiments/ (default: %(default)s)")
    m.add_argument("--epochs", nargs="+", default=[f"{n}:{e}" for n, e in d.epochs.items()], help="epoch budget per size, SIZE:EPOCHS (default: %(default)s)")
    m.add_argument("--val-images", type=int, default=d.val_images)
    m.add_argument("--test-images", type=int, default=d.test_images)
    m.add_argument("--device", default=d.device)
    m.add_argument("--jobs", type=int, default=None, help="runs in parallel, one thread each (default: one per CPU core on a CPU, 1 on a GPU)")
    m.add_argument("--report-only", action="store_true", help="summarise the runs saved so far; train nothing")
    m.add_argument("--benchmarks-md", default=None, help="write the table into this Markdown file between markers")
    m.set_defaults(func=cmd_methods)


def cmd_methods(args: argparse.Namespace) -> int:
    from .bench import default_jobs, for_model, markdown, run, stored_prompts, summarize, targets

    retired = [RETIRED[m] for m in args.methods if m in RETIRED]
    if retired:
        raise ValueError("; ".join(retired))
    epochs = dict(tuple(int(v) for v in item.split(":")) for item in args.epochs)
    missing = [n for n in args.sizes if n not in epochs]
    if missing:
        raise ValueError(f"no epoch budget for sizes {missing}: add --epochs SIZE:EPOCHS")
    if not args.report_only:
        proxy.needs_weights(args.model, args.pretrained)
    cfg = for_model(
        args.model,
        pretrained=args.pretrained,
        **({"shifts": tuple(args.shifts)} if args.shifts else {}),
        sizes=tuple(args.sizes),
        pool=args.pool,
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
    lines = [line for method in TARGET_METHODS if method in cfg.methods for line in targets(summary, method, cfg.world)]
    lines += [line for line in (stored_prompts(rows),) if line]
    print(table)
    print("\n".join(lines))
    if args.benchmarks_md:
        write_section(Path(args.benchmarks_md), table + "\n\n" + "\n".join(f"- {line}" for line in lines), *markers(cfg.model))
    return 0


def write_section(path: Path, body: str, start: str = START, end: str = END) -> None:
    """Replace the text between the markers (or append them), leaving the rest of the file alone."""
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, text)
