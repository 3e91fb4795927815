"""`dbprompt proxy`: make and check the pre-trained proxy backbone shipped with the package."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .. import proxy


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("proxy", help="pre-train or check the shipped proxy backbone", description="The proxy backbone: a small open_clip CLIP pre-trained on the synthetic source domain.")
    proxy_sub = p.add_subparsers(dest="proxy_command", required=True, metavar="ACTION")
    pre = proxy_sub.add_parser("pretrain", help="pre-train from random weights (resumable)", description="Pre-train dbprompt-proxy on the source domain and write its fp16 weights and record into the package.")
    pre.add_argument("--work-dir", default="runs/proxy", help="data and checkpoints (default: %(default)s)")
    pre.add_argument("--images", type=int, default=proxy.IMAGES, help="source images to write (default: %(default)s)")
    pre.add_argument("--epochs", type=int, default=proxy.RECIPE.epochs, help="(default: %(default)s)")
    pre.add_argument("--batch-size", type=int, default=proxy.RECIPE.batch_size, help="(default: %(default)s)")
    pre.add_argument("--lr", type=float, default=proxy.RECIPE.lr, help="(default: %(default)s)")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--hard-negatives", type=int, default=0, metavar="K", help="batches made of runs of K look-alike images (captions sharing most words); 0: random batches (default: %(default)s)")
    pre.add_argument("--device", default="auto")
    pre.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--out", default=None, help="weights file (default: inside the package)")
    pre.set_defaults(func=cmd_pretrain)
    chk = proxy_sub.add_parser("check", help="re-measure the shipped proxy's source R@1", description="Regenerate the held-out source test set and compare T2I R@1 with the recorded value.")
    chk.add_argument("--work-dir", default="runs/proxy")
    chk.add_argument("--device", default="auto")
    chk.set_defaults(func=cmd_check)


def cmd_pretrain(args: argparse.Namespace) -> int:
    cfg = replace(
        proxy.RECIPE,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        hard_negative_group=args.hard_negatives,
    )
    record = proxy.pretrain(
        args.work_dir,
        images=args.images,
        cfg=cfg,
        device=args.device,
        bf16=args.bf16,
        resume=args.resume,
        out=Path(args.out) if args.out else proxy.WEIGHTS,
    )
    m = record["source_test_metrics"]
    print(f"source test T2I R@1 {m['clip_benchmark/t2i_R@1']:.1f}, I2T R@1 {m['clip_benchmark/i2t_R@1']:.1f}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    recorded, now = proxy.check(args.work_dir, device=args.device)
    print(f"source test T2I R@1: recorded {recorded:.1f}, now {now:.1f}")
    return 0 if abs(recorded - now) <= 1.0 else 1
