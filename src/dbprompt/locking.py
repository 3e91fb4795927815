"""One writer per output: an exclusive lock beside what a command writes, so two runs never race."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
# The file descriptors of the locks this process holds (see release_inherited_locks).
_HELD: set[int] = set()


class OutputBusyError(OSError):
    """Another process holds the lock of the output this run would write."""


class OutputExistsError(FileExistsError):
    """The output exists and this run would replace it without being asked to (`--force`)."""


@contextlib.contextmanager
def exclusive(lock_path: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` for the block, or raise OutputBusyError(busy) at once.

    The lock file is removed on the way out. A run that opened it just before its holder removed
    it would lock a file nobody else sees, so the lock counts only while the path still names it.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock_path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutputBusyError(busy) from None
        try:
            current = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()
    _HELD.add(handle.fileno())
    try:
        yield
    finally:
        _HELD.discard(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()
        handle.close()


def release_inherited_locks(*_: Any) -> None:
    """In a forked child (an image-decoding worker): let go of the locks it inherited.

    A flock belongs to the open file, which a fork shares: a worker that outlived its killed parent
    for a few seconds kept the output locked, and the user's re-run was told another run was
    writing. Pointing the child's copies at /dev/null leaves the lock to the process that took it.
    """
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    for fd in list(_HELD):
        os.dup2(null, fd)
    os.close(null)
    _HELD.clear()


@contextlib.contextmanager
def claim_output(out: Path, *, replace: bool, command: str) -> Iterator[None]:
    """Lock `out` for this run; refuse an existing `out` unless `replace`."""
    with exclusive(out.with_name(f".{out.name}.lock"), f"{out}: another `dbprompt {command}` is writing it"):
        if out.exists() and not replace:
            raise OutputExistsError(f"{out}: exists; pass --force (force=True) to replace it")
        yield


def one_writer(command: str) -> Callable[[F], F]:
    """Decorate a function of (`out`, `force`, `resume`): it runs holding `out`'s lock, and refuses an
    existing `out` unless `force` or `resume` (which continues the run that writes it)."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            if int(os.environ.get("RANK", 0)):
                return fn(*args, **kwargs)  # in a torchrun run only rank 0 writes, and it holds the lock
            given = signature.bind(*args, **kwargs).arguments
            replace = bool(given.get("force") or given.get("resume"))
            with claim_output(Path(given["out"]), replace=replace, command=command):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
