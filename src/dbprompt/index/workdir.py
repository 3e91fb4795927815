"""An index build's work directory: checkpoints of the vectors embedded so far, beside the output.

An interrupted build resumes from them, but only a build whose vectors are made alike (database, prompt
file, backbone, and the engine and precision that embed: index/vectors_made.py); any other drops them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..locking import exclusive
from ..untrusted import loads
from .manifest import FORMAT


@dataclass
class Embedded:
    """What is known about one image's vector: the file state and content it was computed from."""

    stamp: tuple[int, int]
    size: tuple[int, int]
    sha256: str
    vector: np.ndarray


class WorkDir:
    """Checkpoints beside the output, locked against a second builder, valid for what made their vectors."""

    def __init__(self, out: Path, on_save: Callable[[int], None]):
        self.out, self.on_save = out, on_save
        self.path = out.with_name(f".{out.name}.work")
        self._lock = contextlib.ExitStack()
        self._chunks = 0

    def __enter__(self) -> "WorkDir":
        self._lock.enter_context(exclusive(self.path / "lock", f"{self.out}: another `dbprompt index` is writing it"))
        try:
            self._recover(self.out)
        except BaseException:
            self._lock.close()
            raise
        return self

    def open(self, identity: dict[str, str]) -> None:
        """Keep the checkpoints of an earlier build with this `identity` (what made their vectors); drop any others."""
        identity = identity | {"format": FORMAT}
        state = self.path / "state.json"
        if not state.is_file() or _read_state(state) != identity:
            for old in self.path.glob("chunk-*.npz"):
                old.unlink()
            atomic_write_text(state, json.dumps(identity))
        self._chunks = len(list(self.path.glob("chunk-*.npz")))

    def __exit__(self, *exc) -> None:
        self._lock.close()

    @staticmethod
    def _recover(out: Path) -> None:
        """Undo what a killed rename left behind: restore the old index if the new one never arrived."""
        old = out.with_name(f".{out.name}.old")
        if old.is_dir() and not out.exists():
            os.replace(old, out)
        for tmp in out.parent.glob(f".{out.name}.*.tmp"):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()

    def load(self) -> dict[str, Embedded]:
        found: dict[str, Embedded] = {}
        for chunk in sorted(self.path.glob("chunk-*.npz")):
            with np.load(chunk) as data:
                columns = zip(data["keys"], data["stamps"], data["sizes"], data["digests"], data["vectors"])
                for key, stamp, size, digest, vector in columns:
                    found[str(key)] = Embedded(tuple(map(int, stamp)), tuple(map(int, size)), str(digest), vector)
        return found

    def save(self, items: dict[str, Embedded]) -> None:
        if not items:
            return
        with atomic_path(self.path / f"chunk-{self._chunks:06d}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                keys=np.array(list(items)),
                stamps=np.array([e.stamp for e in items.values()], dtype=np.int64),
                sizes=np.array([e.size for e in items.values()], dtype=np.int64),
                digests=np.array([e.sha256 for e in items.values()]),
                vectors=np.stack([e.vector for e in items.values()]),
            )
        self._chunks += 1
        self.on_save(len(items))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _read_state(path: Path) -> object:
    try:
        return loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # unreadable: its chunks are not trusted either
