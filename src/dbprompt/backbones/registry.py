"""Backbones named on this machine, by fingerprint: so a prompt file or index loads again without `--model`.

A route a file records is never followed (it could name any path: `backbones.recorded`), which
left the offline routes (`hf:DIR`, `local-dir:DIR`, a checkpoint file) to be named again on every
command. A route the user named is trusted, so when one loads, this registry remembers: that
fingerprint, that route. A file recording the fingerprint then loads through the route named
here, never through its own, and the fingerprint is still checked after loading.

The registry is one JSON file in the user's cache directory (`registry_path`). Only routes that
name a local path are kept: the others load as recorded already. It is a convenience, never a
reason to fail: an unreadable file is ignored and one that cannot be written is skipped, each
with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_write_text
from ..locking import OutputBusyError, exclusive

if TYPE_CHECKING:
    from .base import BackboneAdapter

FILE = "backbones.json"
LOCK_WAIT_S = 10.0  # another process updating the registry holds it for milliseconds
_LOCAL_PREFIXES = ("hf:/", "local-dir:/")  # what `hf:DIR` and `local-dir:DIR` record (absolute)

log = logging.getLogger(__name__)
_WARNED: set[Path] = set()


def cache_dir() -> Path:
    """$DBPROMPT_CACHE_DIR, else $XDG_CACHE_HOME/dbprompt, else ~/.cache/dbprompt."""
    if os.environ.get("DBPROMPT_CACHE_DIR"):
        return Path(os.environ["DBPROMPT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dbprompt"


def registry_path() -> Path:
    return cache_dir() / FILE


@dataclass(frozen=True)
class Route:
    """What the user named (`--model`, `--pretrained`, paths absolute) and when it was first remembered."""

    model: str
    pretrained: str | None
    recorded_at: str

    def flags(self) -> str:
        return flags(self.model, self.pretrained)


def flags(model: str, pretrained: str | None) -> str:
    """The command-line words that name (model, pretrained): `--pretrained` only where it says something."""
    words = ["--model", model] + (["--pretrained", pretrained] if pretrained not in (None, model) else [])
    return shlex.join(words)


def lookup(fingerprint: str) -> Route | None:
    """The route this machine's user named for a backbone with `fingerprint`, if any."""
    return _read(registry_path()).get(fingerprint)


def remember(backbone: BackboneAdapter, pretrained: str | None) -> None:
    """Keep `backbone` (loaded from what the user named; `pretrained` as given) when its route names a local path."""
    route = _local_route(backbone, pretrained)
    if route is None:
        return
    path, fingerprint = registry_path(), backbone.fingerprint()
    if _same(_read(path).get(fingerprint), route):
        return  # known already: no lock and no write on every command
    try:
        with _locked(path):
            entries = _read(path)  # again, under the lock: another process may have added one since
            entries[fingerprint] = route
            text = json.dumps({k: asdict(v) for k, v in sorted(entries.items())}, indent=1) + "\n"
            atomic_write_text(path, text)
    except OSError as exc:  # a read-only home, a full disk, a registry held too long: only the convenience is lost
        log.warning("warning: could not remember %s in %s (%s); name it again with --model next time", route.flags(), path, exc)


def _same(known: Route | None, route: Route) -> bool:
    return known is not None and known.flags() == route.flags()


def _local_route(backbone: BackboneAdapter, pretrained: str | None) -> Route | None:
    """The route to keep, paths absolute (a relative one named in one directory must work from another)."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if backbone.name.startswith(_LOCAL_PREFIXES):
        return Route(backbone.name, backbone.pretrained, now)
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        return Route(backbone.name, str(Path(pretrained).expanduser().resolve()), now)
    return None


@contextlib.contextmanager
def _locked(path: Path):
    """The registry's lock, waited for (two commands started together both remember their backbone)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    with contextlib.ExitStack() as held:
        while True:
            try:
                held.enter_context(exclusive(path.with_name(f".{path.name}.lock"), f"{path}: held by another process"))
                break
            except OutputBusyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield


def _read(path: Path) -> dict[str, Route]:
    """The registry's entries; an unreadable or malformed file (or entry) is ignored with a warning."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        return _ignored(path, str(exc))
    if not isinstance(data, dict):
        return _ignored(path, "not a JSON object")
    return {k: route for k, v in data.items() if (route := _route(v)) is not None}


def _ignored(path: Path, why: str) -> dict[str, Route]:
    """No entries, said once per process (a command reads the registry more than once)."""
    if path not in _WARNED:
        _WARNED.add(path)
        log.warning("warning: ignoring %s (%s); delete it to clear the backbones remembered on this machine", path, why)
    return {}


def _route(value: Any) -> Route | None:
    if not isinstance(value, dict) or not isinstance(value.get("model"), str):
        return None
    pretrained, at = value.get("pretrained"), value.get("recorded_at", "")
    if not (pretrained is None or isinstance(pretrained, str)) or not isinstance(at, str):
        return None
    return Route(value["model"], pretrained, at)
