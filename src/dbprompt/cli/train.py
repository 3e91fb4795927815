"""`dbprompt train`: train one database's prompt file."""

from __future__ import annotations

import argparse

from ..data.database import ReadOptions
from ..data.splits import SplitConfig
from ..options import add_options
from ..prompts.config import PromptConfig
from ..training.config import TrainConfig
from .common import add_database_args, add_model_args, add_runtime_args, add_split_args, options_of, report_skipped, runtime_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train prompts on a database", description="Train textual and visual prompts on a frozen backbone; writes one small prompt file.")
    add_database_args(p)
    p.add_argument("--out", required=True, help="prompt file to write (.safetensors)")
    add_model_args(p, required=True)
    add_options(p, PromptConfig, "prompts")
    g = add_options(p, TrainConfig, "training")
    g.add_argument("--work-dir", default=None, help="checkpoint directory (default: OUT.work)")
    g.add_argument("--resume", action="store_true", help="continue from the work directory's checkpoint")
    g.add_argument("--force", action="store_true", help="replace an existing --out prompt file")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_split_args(p)
    add_runtime_args(p, batch_size=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import train

    options = options_of(args, PromptConfig, TrainConfig, SplitConfig, ReadOptions)
    anchors = options.pop("anchor")
    anchors = anchors if isinstance(anchors, list) else [anchors]
    report = train(
        args.db, args.out, model=args.model, pretrained=args.pretrained, anchors=anchors, runtime=runtime_of(args),
        work_dir=args.work_dir, resume=args.resume, force=args.force, progress=args.progress, **options,
    )
    report_skipped(report.bad_input, args.db)
    print(
        f"wrote {report.path} ({report.path.stat().st_size:,} bytes); anchor {report.train_config.anchor:g}, "
        f"best epoch {report.best_epoch} (0 = before training) by validation T2I R@1 {report.best_score:.1f}"
    )
    if report.kept_zero_shot:
        print(
            "note: no trained epoch beat zero-shot on validation, so this prompt file ranks exactly as zero-shot "
            "does. Prompts adapt mostly the captions' side: where the images themselves differ from the "
            "backbone's (textures, noise, rotation), they were seen to gain little. The best there was a "
            "visual-only prompt with 4x the epochs: --text-len 0 --vocab 0 --visual-len 32 --lr 1e-2 "
            f"--epochs {4 * report.train_config.epochs} (+1.6 to +3.5 test points; BENCHMARKS.md, visual shift)."
        )
    return 0
