"""Option groups several subcommands share, and turning them into objects."""

from __future__ import annotations

import argparse

import open_clip

from ..backbones import BackboneAdapter, load_backbone, shipped_weights
from ..data import Database, load_database


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("database")
    g.add_argument("db", help="imagefolder directory (metadata.jsonl/csv), Karpathy JSON, or CSV/TSV file")
    g.add_argument("--format", default="auto", choices=["auto", "imagefolder", "karpathy", "csv"])
    g.add_argument("--image-root", default=None, help="directory image paths are relative to (Karpathy, CSV)")
    g.add_argument("--image-column", default="filepath", help="CSV/TSV image column (default: filepath)")
    g.add_argument("--caption-column", default="title", help="CSV/TSV caption column (default: title)")
    g.add_argument("--skip-bad", action="store_true", help="skip and count bad images/captions instead of stopping")


def add_split_args(parser: argparse.ArgumentParser, *, defaults_from_prompts: bool = False) -> None:
    g = parser.add_argument_group("splits (used when the database file names none)")
    note = " (default: as recorded in the prompt file, else %(default)s)" if defaults_from_prompts else ""
    g.add_argument("--val-fraction", type=float, default=None if defaults_from_prompts else 0.1, help="held-out images for choosing epochs" + note)
    g.add_argument("--test-fraction", type=float, default=None if defaults_from_prompts else 0.1, help="held-out images for the final evaluation" + note)
    g.add_argument("--split-seed", type=int, default=None if defaults_from_prompts else 0, help="seed of the split by image" + note)


def add_runtime_args(parser: argparse.ArgumentParser, *, batch_size: bool = True) -> None:
    """Device and precision, and the batch size where there are batches (not for single queries)."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    g.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on where the hardware supports it)",
    )
    if batch_size:
        g.add_argument("--batch-size", type=int, default=64)


def add_model_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    g = parser.add_argument_group("backbone")
    g.add_argument("--model", required=required, help="open_clip model name (e.g. ViT-B-32), hf-hub:org/repo, or dbprompt-proxy (shipped, pre-trained on the synthetic world)")
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. laion2b_s34b_b79k), a local checkpoint file, or 'random'; not needed for models shipped with weights")


def backbone_from_args(args: argparse.Namespace, device: str) -> BackboneAdapter:
    """Refuse to fall back to random weights silently: a user must ask for them."""
    if args.pretrained is None and shipped_weights(args.model) is None:
        tags = open_clip.list_pretrained_tags_by_model(args.model) if args.model in open_clip.list_models() else []
        hint = f" (open_clip has: {', '.join(tags[:4])})" if tags else ""
        raise ValueError(f"--model {args.model}: say which weights with --pretrained TAG{hint}, a checkpoint file, or 'random'")
    return load_backbone(args.model, args.pretrained, device=device)


def load_db(args: argparse.Namespace) -> Database:
    db = load_database(
        args.db,
        args.format,
        image_root=args.image_root,
        image_column=args.image_column,
        caption_column=args.caption_column,
        skip_bad=args.skip_bad,
    )
    if db.report.items:
        print(f"skipped bad input in {args.db}: {db.report.summary()}")
    return db


