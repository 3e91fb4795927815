"""The `dbprompt` command: a thin layer over the Python API; each group of subcommands registers itself.

Nothing heavy is imported to build the parser: torch, open_clip and FAISS load only when a
command runs, so `--help` answers at once. Exit codes are documented in `errors`.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from . import errors, evaluate, search, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbprompt",
        description="Adapt a frozen CLIP to one image database with trainable prompts, then index and search it.",
        epilog=(
            "Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad data (a database, image, prompt file or index), "
            "4 weights not available (not on this machine and not to be downloaded; see docs/backbones.md)."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.register(sub)
    evaluate.register(sub)
    search.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:
        return errors.report(args.command, exc)
