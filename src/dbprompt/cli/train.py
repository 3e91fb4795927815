"""`dbprompt train`: train one database's prompt file."""

from __future__ import annotations

import argparse

from ..data.database import ReadOptions
from ..data.splits import SMALL_SPLIT, SplitConfig
from ..options import add_options
from ..prompts.config import PromptConfig
from ..training.config import LAST_EPOCH, TrainConfig
from .common import (
    add_database_args, add_model_args, add_output_args, add_runtime_args, add_split_args, emit, message, options_of,
    progress_of, report_skipped, runtime_of,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train prompts on a database", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="dbprompt train DB --out FILE --model MODEL [--pretrained WEIGHTS] [options]",
        description=(
            "Train textual and visual prompts on a frozen backbone; writes one small prompt file.\n\n"
            "examples:\n"
            "  dbprompt train photos/ --out photos.safetensors --model ViT-B-32 --pretrained laion2b_s34b_b79k\n"
            "  dbprompt train photos/ --caption-template 'a photo of a {}' --out photos.safetensors --model dbprompt-proxy\n"
            "  dbprompt train photos/ --feedback photos.index --out round2.safetensors --model dbprompt-proxy"
        ),
    )
    add_database_args(p)
    p.add_argument("--out", required=True, help="prompt file to write (.safetensors)")
    add_model_args(p, required=True)
    add_options(p, PromptConfig, "prompts")
    g = add_options(p, TrainConfig, "training")
    g.add_argument("--work-dir", default=None, help="checkpoint directory (default: OUT.work)")
    g.add_argument("--resume", action="store_true", help="continue from the work directory's checkpoint")
    g.add_argument("--keep-work", action="store_true", help="keep the checkpoint once training has finished (by default it is removed)")
    g.add_argument("--log-dir", default=None, metavar="DIR", help="write each epoch's validation scores and loss to DIR/history.csv and as TensorBoard scalars")
    g.add_argument("--force", action="store_true", help="replace an existing --out prompt file")
    g.add_argument(
        "--feedback", default=None, metavar="INDEX_DIR",
        help="also learn from the marks users made on this index's search page (serve --feedback): a query marked "
        "relevant is a caption of its image, one marked irrelevant a hard negative; the database then needs no captions",
    )
    add_split_args(p)
    add_runtime_args(p, batch_size=False)
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import train
    from ..training.distributed import launched, leave

    options = options_of(args, PromptConfig, TrainConfig, SplitConfig, ReadOptions)
    try:
        report = train(
            args.db, args.out, model=args.model, pretrained=args.pretrained, runtime=runtime_of(args),
            work_dir=args.work_dir, resume=args.resume, force=args.force, progress=progress_of(args), log=message,
            log_dir=args.log_dir, feedback=args.feedback, keep_work=args.keep_work, **options,
        )
    finally:
        leave()
    if launched()[0]:
        return 0  # under torchrun only rank 0 reports
    report_skipped(report.bad_input, args.db)
    if report.kept_zero_shot:
        message(
            f"note: no trained epoch beat zero-shot on the {report.val_images} validation images, so this prompt file "
            "ranks exactly as zero-shot does. Try more --epochs or another --lr; where the images themselves differ "
            "from what the backbone saw, the image side alone (--text-len 0 --vocab 0) may do better."
            + (" With so few validation images the choice is also noisy." if report.val_images < SMALL_SPLIT else "")
        )
    if report.selected_by == LAST_EPOCH:
        kept = f"kept epoch {report.best_epoch}, the last (validation's {report.val_images} images are too few to choose by)"
    else:
        kept = (f"best epoch {report.best_epoch} (0 = before training) by validation "
                f"{'mAP' if report.selected_by == 'label/t2i_mAP' else 'T2I R@1'} {report.best_metric:.1f}")
    emit(args, report.to_json(), f"wrote {report.path} ({report.path.stat().st_size:,} bytes); {kept}")
    return 0
