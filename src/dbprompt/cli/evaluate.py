"""`dbprompt eval` and `dbprompt info`: Recall@K before and after, and what a prompt file or an index holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.database import ReadOptions
from ..data.splits import SplitConfig
from .common import (
    add_database_args, add_model_args, add_output_args, add_runtime_args, add_split_args, emit, message, options_of,
    progress_of, report_skipped, runtime_of,
)

TABLE_KEYS = ("trainable_params", "artifact_bytes") + tuple(
    f"{d}/{k}" for d in ("clip_benchmark", "open_clip") for k in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1")
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="Recall@K zero-shot vs with prompts", description="Evaluate text<->image retrieval on a split: zero-shot and with a prompt file, side by side.")
    add_database_args(p, from_prompts=True)
    p.add_argument("--prompts", default=None, help="prompt file; without it only zero-shot is evaluated")
    add_model_args(p, required=False, recorded=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--report", default=None, metavar="DIR", help="also write an HTML report to DIR: recall@K curves, the validation curve, example queries")
    add_split_args(p, from_prompts=True)
    add_runtime_args(p)
    add_output_args(p)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("info", help="show what a prompt file or an index holds", description="Print the metadata of a prompt file (backbone, fingerprint, prompt config, training summary) or of an index directory (its manifest and prompt file).")
    p.add_argument("file", metavar="FILE_OR_INDEX_DIR")
    add_output_args(p, progress=False)
    p.set_defaults(func=run_info)


def run_eval(args: argparse.Namespace) -> int:
    from ..api import evaluate
    from ..metrics import LABEL_KEYS, LABELS_SHARE, format_table
    from ..storage import read_prompt_file

    options = options_of(args, SplitConfig, ReadOptions, skip_none=True)
    report = evaluate(
        args.db, args.prompts, model=args.model, pretrained=args.pretrained, split=args.split,
        runtime=runtime_of(args), batch_size=args.batch_size, progress=progress_of(args), report=args.report,
        log=message, **options,
    )
    report_skipped(report.bad_input, args.db)
    sizes = {"zero-shot": (0, 0)}
    if args.prompts:
        pf = read_prompt_file(args.prompts)
        sizes = {name: (pf.parameter_count, Path(args.prompts).stat().st_size) for name in report.rows} | sizes
    rows = {name: m | {"trainable_params": sizes[name][0], "artifact_bytes": sizes[name][1]} for name, m in report.rows.items()}
    # Where captions repeat (folders, tags), the label-level metrics too; where most are shared, R@K's ties
    # count a query's other relevant images against it: its text->image columns get a dagger.
    shared = min(m.get("label/shared", 0.0) for m in rows.values()) >= LABELS_SHARE
    keys = TABLE_KEYS + (LABEL_KEYS if all("label/t2i_mAP" in m for m in rows.values()) else ())
    # A saturated R@K is shown with a star: rename the column so the table says it, not just a footnote.
    star = {k: k + "*" if k in report.saturated else k + "†" if shared and "/t2i_R@" in k else k for k in keys}
    table = format_table([(name, {star[k]: m[k] for k in keys}) for name, m in rows.items()], list(star.values()))
    lines = [
        f"{report.split} split: {report.images} images, {report.captions} captions, backbone {report.backbone} [{report.pretrained}]",
        "R@K in %; clip_benchmark = every caption a query, any caption a hit; open_clip = 1:1 pairs (first caption)",
        table,
    ]
    if any(k in report.saturated for k in TABLE_KEYS):
        lines.append(
            f"* saturated: K reaches every candidate a query ranks ({report.images} images, {report.captions} captions), "
            "so every query hits and the number says nothing about the model; evaluate on more images"
        )
    if shared:
        lines.append(
            "† most captions are shared by several images (folders, tags): a text query's other relevant images count "
            "against it, so R@K says little here; label/ columns (in %) treat every image with the query's text as relevant"
        )
    if report.report:
        message(f"report: {report.report}")
    emit(args, report.to_json() | {"rows": rows}, "\n".join(lines))
    return 0


def _prompt_file_info(path: str | Path) -> dict:
    import dataclasses

    from ..backbones.recorded import check_recorded_backbone
    from ..storage import read_prompt_file

    pf = read_prompt_file(path)
    # What eval, index and serve would refuse without --model, refused here too, before anything is built.
    known = check_recorded_backbone(pf.backbone_id, source=str(pf.path))
    loads = f"{known.flags()} (named on this machine {known.recorded_at})" if known else "as recorded (shipped or cached weights)"
    return {
        "file": str(pf.path),
        "bytes": pf.path.stat().st_size,
        "dbprompt_version": pf.metadata.get("dbprompt_version"),
        "backbone": pf.backbone,
        "pretrained": pf.pretrained,
        "backbone_fingerprint": pf.fingerprint,
        "backbone_loads_with": loads,
        "format": pf.metadata.get("format"),
        "prompt_method": pf.method,
        "prompt_config": dataclasses.asdict(pf.config),
        "parameters": pf.parameter_count,
        "tensors": {k: list(v.shape) for k, v in pf.tensors.items()},
        "training": pf.extra,
    }


def _lines(info: dict) -> list[str]:
    """One `key value` line per field; the training summary and the index's last build shortened."""
    out = []
    for key, value in info.items():
        if key == "training":
            value = {k: value[k] for k in ("best_epoch", "best_val_score", "train_images", "database") if k in value}
        out.append(f"{key:22} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return out


def run_info(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.is_dir():
        from ..index.manifest import PROMPTS, read_info

        index = {"index": str(path)} | read_info(path).to_json()
        prompts = _prompt_file_info(path / PROMPTS)
        emit(args, index | {"prompts": prompts}, "\n".join(_lines(index) + ["", f"prompt file {PROMPTS}:"] + _lines(prompts)))
        return 0
    info = _prompt_file_info(path)
    emit(args, info, "\n".join(_lines(info)))
    return 0
