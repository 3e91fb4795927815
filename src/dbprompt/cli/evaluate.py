"""`dbprompt eval` and `dbprompt info`: Recall@K before and after, and what a prompt file holds."""

from __future__ import annotations

import argparse
import json

from ..data.database import ReadOptions
from ..data.splits import SplitConfig
from .common import add_database_args, add_model_args, add_runtime_args, add_split_args, options_of, report_skipped, runtime_of

TABLE_KEYS = ("trainable_params", "artifact_bytes") + tuple(
    f"{d}/{k}" for d in ("clip_benchmark", "open_clip") for k in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1")
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="Recall@K zero-shot vs with prompts", description="Evaluate text<->image retrieval on a split: zero-shot and with a prompt file, side by side.")
    add_database_args(p)
    p.add_argument("--prompts", default=None, help="prompt file; without it only zero-shot is evaluated")
    add_model_args(p, required=False, recorded=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_split_args(p, from_prompts=True)
    add_runtime_args(p)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("info", help="show what a prompt file holds", description="Print a prompt file's metadata: backbone, fingerprint, prompt config, training summary.")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_info)


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..api import evaluate
    from ..metrics import format_table
    from ..storage import read_prompt_file

    options = options_of(args, SplitConfig, ReadOptions, skip_none=True)
    report = evaluate(
        args.db, args.prompts, model=args.model, pretrained=args.pretrained, split=args.split,
        runtime=runtime_of(args), batch_size=args.batch_size, **options,
    )
    report_skipped(report.bad_input, args.db)
    sizes = {"zero-shot": (0, 0)}
    if args.prompts:
        pf = read_prompt_file(args.prompts)
        sizes = {name: (pf.parameter_count, Path(args.prompts).stat().st_size) for name in report.rows} | sizes
    rows = [(name, m | {"trainable_params": sizes[name][0], "artifact_bytes": sizes[name][1]}) for name, m in report.rows.items()]
    if args.json:
        print(json.dumps({"split": report.split, "images": report.images, "backbone": report.backbone, "rows": dict(rows)}, indent=2))
    else:
        print(f"{report.split} split: {report.images} images, {report.captions} captions, backbone {report.backbone} [{report.pretrained}]")
        print("R@K in %; clip_benchmark = every caption a query, any caption a hit; open_clip = 1:1 pairs (first caption)")
        print(format_table(rows, TABLE_KEYS))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..storage import read_prompt_file

    pf = read_prompt_file(args.file)
    info = {
        "file": str(pf.path),
        "bytes": pf.path.stat().st_size,
        "dbprompt_version": pf.metadata.get("dbprompt_version"),
        "backbone": pf.backbone,
        "pretrained": pf.pretrained,
        "backbone_fingerprint": pf.fingerprint,
        "prompt_config": json.loads(pf.config.to_json()),
        "parameters": pf.parameter_count,
        "tensors": {k: list(v.shape) for k, v in pf.tensors.items()},
        "training": pf.extra,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "training":
            summary = {k: value[k] for k in ("best_epoch", "best_val_score", "train_images", "database") if k in value}
            print(f"{key:22} {json.dumps(summary)}")
        else:
            print(f"{key:22} {value if not isinstance(value, dict) else json.dumps(value)}")
    return 0
