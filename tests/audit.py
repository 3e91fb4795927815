"""What the code under test opens and whom it contacts, seen through Python's audit hooks (PEP 578).

Only this process is watched: run decoding in-process (`workers=0`) where it matters.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

_active: list["Seen"] = []
_lock = threading.Lock()


@dataclass
class Seen:
    opened: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)

    def opened_under(self, folder: Path) -> list[str]:
        """Files opened inside `folder` (as named, or once symlinks are resolved)."""
        roots = {str(folder), os.path.realpath(folder)}
        return [p for p in self.opened if any(p == r or p.startswith(r + os.sep) for r in roots)]


def _hook(event: str, args: tuple) -> None:
    if not _active:
        return
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        found = [path, os.path.realpath(path)]
        with _lock:
            for seen in _active:
                seen.opened.extend(found)
    elif event in ("socket.connect", "socket.getaddrinfo"):
        with _lock:
            for seen in _active:
                seen.network.append(f"{event} {args[1:2]}")


sys.addaudithook(_hook)


@contextlib.contextmanager
def watching() -> Iterator[Seen]:
    """Record every file opened and every network call made (by any thread of this process) in the block."""
    seen = Seen()
    _active.append(seen)
    try:
        yield seen
    finally:
        _active.remove(seen)
