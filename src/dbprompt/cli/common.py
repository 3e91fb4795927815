"""Option groups several subcommands share, built from the option dataclasses where there is one.

Streams: a command's result goes to stdout (a table, or one JSON object with --json); every
message (progress, notes, warnings) goes to stderr, so `dbprompt ... --json | jq` always parses.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..data.database import ReadOptions
from ..data.recorded import recorded_fields
from ..data.splits import SplitConfig
from ..options import add_options, field_names


def add_database_args(parser: argparse.ArgumentParser, *, from_prompts: bool = False) -> None:
    """With `from_prompts`, unset flags mean: as recorded in the prompt file (for the same database)."""
    parser.add_argument(
        "db",
        help="imagefolder directory (metadata.jsonl/csv), Karpathy JSON, CSV/TSV file, or webdataset/parquet shards "
        "(a folder of them, one, or a brace pattern such as 'shards/{00000..00099}.tar')",
    )
    if from_prompts:
        defaults = {name: None for name in recorded_fields()}
        add_options(parser, ReadOptions, "database (unset: as recorded in the prompt file for this database, else as train reads it)", defaults=defaults)
    else:
        add_options(parser, ReadOptions, "database")


def add_split_args(parser: argparse.ArgumentParser, *, from_prompts: bool = False) -> None:
    """With `from_prompts`, unset flags mean: as recorded in the prompt file."""
    defaults = {name: None for name in field_names(SplitConfig)} if from_prompts else None
    add_options(parser, SplitConfig, "splits (used when the database file names none)", defaults=defaults)


def add_model_args(parser: argparse.ArgumentParser, *, required: bool, recorded: bool = False) -> None:
    """With `recorded`, unset flags mean: the backbone the prompt file or index records, from local weights only."""
    title = "backbone (default: the one the file records, loaded only from weights on this machine)" if recorded else "backbone"
    g = parser.add_argument_group(title)
    g.add_argument(
        "--model", required=required,
        help="open_clip model name (e.g. ViT-B-32, with --pretrained); hf-hub:org/repo or local-dir:DIR (open_clip layout, "
        "weights included); hf:org/repo or hf:DIR (a Hugging Face CLIPModel or SiglipModel, weights included); or "
        "dbprompt-proxy (shipped, pre-trained on the synthetic world). Weights come from this machine first (a "
        "file, a directory, the Hugging Face cache), the network only if needed; see docs/backbones.md",
    )
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. laion2b_s34b_b79k), a local checkpoint file, or 'random'; not needed for models shipped with weights, nor for hf:, hf-hub: or local-dir: models, whose weights come with them ('random' still gives random weights; for hf:org/repo a revision)")


def add_runtime_args(parser: argparse.ArgumentParser, *, batch_size: bool = True, engine: bool = False) -> None:
    """Device, precision and decoding workers; the batch size where there are batches (not for single queries);
    with `engine`, --runtime (index, search, serve)."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: on where the hardware pays off)")
    g.add_argument("--workers", type=int, default=None, help="image-decoding worker processes (default: one per core but one, at most 4)")
    if engine:
        g.add_argument(
            "--runtime", dest="engine", choices=("torch", "onnx"), default="torch",
            help="torch, or onnx: the prompt file's towers exported to ONNX Runtime (pip install 'dbprompt[onnx]'), "
            "kept in the index directory (default: torch)",
        )
    if batch_size:
        g.add_argument("--batch-size", type=int, default=64, help="images per batch (default: %(default)s)")


def add_output_args(parser: argparse.ArgumentParser, *, progress: bool = True) -> None:
    """--json, and --progress/--no-progress where the command has progress to show."""
    g = parser.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text (messages stay on stderr)")
    if progress:
        g.add_argument(
            "--progress", action=argparse.BooleanOptionalAction, default=None,
            help="progress bars on stderr (default: only when stderr is a terminal; logs get the epoch lines alone)",
        )


def progress_of(args: argparse.Namespace) -> bool:
    """Bars for a person at a terminal; none in a log file or pipe, where carriage returns make a mess."""
    return sys.stderr.isatty() if args.progress is None else args.progress


def message(text: str) -> None:
    """A note, warning or log line: stderr, so stdout holds only the result."""
    print(text, file=sys.stderr, flush=True)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """The command's result: `data` as JSON with --json, else `text`."""
    print(json.dumps(data, indent=2) if args.json else text)


def runtime_of(args: argparse.Namespace):
    from ..runtime import Runtime

    return Runtime.resolve(args.device, args.bf16, args.workers, getattr(args, "engine", "torch"))


def options_of(args: argparse.Namespace, *classes: type, skip_none: bool = False) -> dict[str, Any]:
    """The fields of these option dataclasses as the command line set them (None dropped with skip_none)."""
    names = set().union(*(field_names(c) for c in classes))
    values = {k: v for k, v in vars(args).items() if k in names}
    return {k: v for k, v in values.items() if v is not None} if skip_none else values


def report_skipped(report, db: str) -> None:
    """What --skip-bad left out, counted by kind (a BadInputReport)."""
    if report.items:
        message(f"skipped bad input in {db}: {report.summary()}")
