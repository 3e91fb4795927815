"""How a database was read, recorded in its prompt file, so eval and index need not be told again.

A Karpathy or CSV database needs `--image-root` and its columns on every command; training
records them and eval/index reuse them for the same database file. Options given again win.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from ..options import field_names, flag_of
from .database import Database, ReadOptions

# How to read a database, not how strict to be this time: --skip-bad is asked for per command.
NOT_RECORDED = frozenset({"skip_bad"})


def recorded_fields() -> set[str]:
    """The ReadOptions a prompt file records (and eval/index reuse when not given)."""
    return field_names(ReadOptions) - NOT_RECORDED


def record_read_options(read: ReadOptions) -> dict[str, Any]:
    """The options to record, with the image root made absolute so another working directory reads the same."""
    recorded = {k: v for k, v in dataclasses.asdict(read).items() if k in recorded_fields()}
    if recorded.get("image_root") is not None:
        recorded["image_root"] = os.path.abspath(recorded["image_root"])
    return recorded


def _same_database(where: str | os.PathLike, trained_on: str) -> bool:
    """Whether `where` is the database a prompt file names: by its file or folder name (the file records
    only that, so sharing it shares nothing of the owner's directories), or by path in older files."""
    if "/" in trained_on or os.sep in trained_on:
        return os.path.realpath(where) == os.path.realpath(trained_on)
    return Path(os.path.realpath(where)).name == trained_on


def reuse_read_options(
    db: str | os.PathLike | Database,
    given: dict[str, Any],
    extra: dict[str, Any],
    source: str | os.PathLike,
    log: Callable[[str], None],
) -> ReadOptions:
    """`given` options over those `extra` (a prompt file's training summary) recorded for the same database.

    A prompt file trained on another database file keeps its options to itself: they describe
    how to read that file. `source` names the prompt file in the messages.
    """
    recorded = {k: v for k, v in extra.get("read", {}).items() if k in recorded_fields()}
    where = db.source if isinstance(db, Database) else db
    trained_on = extra.get("database")
    reused = {k: v for k, v in recorded.items() if k not in given and v != _default(k)}
    if reused and trained_on and not _same_database(where, str(trained_on)):
        log(f"note: {source} was trained on {trained_on}; its read options ({_flags(reused)}) are not reused for {Path(where)}")
        return ReadOptions(**given)
    if reused:
        log(f"reading {Path(where)} as recorded in {source}: {_flags(reused)}")
    return ReadOptions(**(recorded | given))


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(ReadOptions) if f.name == name)


def _flags(options: dict[str, Any]) -> str:
    flags = {f.name: flag_of(f) for f in dataclasses.fields(ReadOptions)}
    return " ".join(f"{flags[k]} {v}" for k, v in sorted(options.items()))
