"""The `dbprompt` command: a thin layer over the Python API; each group of subcommands registers itself.

Nothing heavy is imported to build the parser: torch, open_clip and FAISS load only when a
command runs, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import evaluate, search, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbprompt",
        description="Adapt a frozen CLIP to one image database with trainable prompts, then index and search it.",
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as exc:
        # Bad input of every kind ends here with its own message, not a traceback.
        print(f"dbprompt {args.command}: error: {exc}", file=sys.stderr)
        return 2
