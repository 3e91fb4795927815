"""The `dbprompt` command: a thin layer over the Python API; each group of subcommands registers itself.

Nothing heavy is imported to build the parser: torch, open_clip and FAISS load only when a
command runs, so `--help` answers at once. Exit codes are documented in `errors`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .. import __version__
from . import errors, evaluate, export, search, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbprompt",
        description="Adapt a frozen CLIP to one image database with trainable prompts, then index and search it.",
        epilog=(
            "Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad data (a database, image, prompt file or index), "
            "4 weights not available (not on this machine and not to be downloaded; see docs/backbones.md), "
            "5 busy (another run writes that output), 141 the output's reader went away (| head)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dbprompt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.register(sub)
    evaluate.register(sub)
    search.register(sub)
    export.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # Whoever read the output stopped reading: nothing left to say, and nowhere to say it. Later
        # writes (the interpreter's last flush) go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return errors.PIPE_CLOSED
    except (Exception, KeyboardInterrupt) as exc:
        return errors.report(args.command, exc)
