"""Option groups several subcommands share, built from the option dataclasses where there is one."""

from __future__ import annotations

import argparse
from typing import Any

from ..data.database import ReadOptions
from ..data.splits import SplitConfig
from ..options import add_options, field_names


def add_database_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("db", help="imagefolder directory (metadata.jsonl/csv), Karpathy JSON, or CSV/TSV file")
    add_options(parser, ReadOptions, "database")


def add_split_args(parser: argparse.ArgumentParser, *, from_prompts: bool = False) -> None:
    """With `from_prompts`, unset flags mean: as recorded in the prompt file."""
    defaults = {name: None for name in field_names(SplitConfig)} if from_prompts else None
    add_options(parser, SplitConfig, "splits (used when the database file names none)", defaults=defaults)


def add_model_args(parser: argparse.ArgumentParser, *, required: bool, recorded: bool = False) -> None:
    """With `recorded`, unset flags mean: the backbone the prompt file or index records, from local weights only."""
    title = "backbone (default: the one the file records, loaded only from weights on this machine)" if recorded else "backbone"
    g = parser.add_argument_group(title)
    g.add_argument("--model", required=required, help="open_clip model name (e.g. ViT-B-32), hf-hub:org/repo, or dbprompt-proxy (shipped, pre-trained on the synthetic world)")
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. laion2b_s34b_b79k), a local checkpoint file, or 'random'; not needed for models shipped with weights")


def add_runtime_args(parser: argparse.ArgumentParser, *, batch_size: bool = True) -> None:
    """Device, precision and decoding workers; the batch size where there are batches (not for single queries)."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: on where the hardware pays off)")
    g.add_argument("--workers", type=int, default=None, help="image-decoding worker processes (default: one per core but one, at most 4)")
    if batch_size:
        g.add_argument("--batch-size", type=int, default=64, help="images per batch (default: %(default)s)")


def runtime_of(args: argparse.Namespace):
    from ..runtime import Runtime

    return Runtime.resolve(args.device, args.bf16, args.workers)


def options_of(args: argparse.Namespace, *classes: type, skip_none: bool = False) -> dict[str, Any]:
    """The fields of these option dataclasses as the command line set them (None dropped with skip_none)."""
    names = set().union(*(field_names(c) for c in classes))
    values = {k: v for k, v in vars(args).items() if k in names}
    return {k: v for k, v in values.items() if v is not None} if skip_none else values


def report_skipped(report, db: str) -> None:
    """What --skip-bad left out, counted by kind (a BadInputReport)."""
    if report.items:
        print(f"skipped bad input in {db}: {report.summary()}")
