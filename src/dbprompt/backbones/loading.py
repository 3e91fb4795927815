"""Getting a backbone's weights, and saying plainly when they cannot be had.

Every load first tries what is on this machine (a file, a directory, the Hugging Face cache)
with the hub switched off, so a cached model never touches the network. Only when the weights
are not here does it go to the network, after one short probe instead of huggingface_hub's
minute of retries. When the weights cannot be had (not local and: the caller wants local only,
HF_HUB_OFFLINE is set, the hub cannot be reached, or the hub refuses) one
`WeightsUnavailableError` names the model, the reason and the routes that need no network.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Callable, TypeVar

from . import shim

T = TypeVar("T")

PROBE_TIMEOUT_S = 4.0

OFFLINE_ROUTES = (
    "To run with no network, give the weights locally: --pretrained FILE (an open_clip checkpoint), "
    "--model local-dir:DIR (open_clip layout: open_clip_config.json and its weights), "
    "--model hf:DIR (Hugging Face layout: config.json, model.safetensors and the tokenizer files), "
    "or fill the Hugging Face cache where there is a network and run here with HF_HUB_OFFLINE=1 "
    "(see docs/backbones.md)"
)


class WeightsUnavailableError(RuntimeError):
    """A backbone's weights are neither on this machine nor to be had from the network (the CLI's exit code 4)."""


def fetch(load: Callable[[], T], what: str, *, local_only: bool = False) -> T:
    """`load()` from what is local; failing that, and when allowed, from the network.

    `what` names the files in messages (e.g. "the weights of ViT-B-32 --pretrained laion2b_s34b_b79k").
    `local_only`: never the network (for backbones named in files, which must already be here).
    """
    held = _HeldLogs()
    try:
        with shim.hub_offline(), held:
            result = load()
    except Exception as exc:  # noqa: BLE001 - only "not in the cache" is handled; the rest is re-raised
        if not _in_chain(exc, _not_local_types()):
            held.replay()
            raise
    else:
        held.replay()
        return result
    from huggingface_hub import constants

    missing = f"not on this machine (nor in the Hugging Face cache {constants.HF_HUB_CACHE})"
    if local_only:
        raise WeightsUnavailableError(message(what, missing))
    if constants.is_offline_mode():
        raise WeightsUnavailableError(message(what, f"{missing}, and HF_HUB_OFFLINE is set"))
    unreachable = probe(constants.ENDPOINT)
    if unreachable:
        raise WeightsUnavailableError(message(what, f"{missing}, and {constants.ENDPOINT} cannot be reached ({unreachable})"))
    try:
        return load()
    except Exception as exc:  # noqa: BLE001 - only the hub's and the network's failures are handled
        if not _in_chain(exc, _hub_failure_types(), transport=True):
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailableError(message(what, f"the download failed: {first_line}")) from None


class _HeldLogs(logging.Handler):
    """Log records of a local attempt, held back: replayed if it stands, dropped if the network is tried next.

    open_clip logs a failed download at ERROR on the root logger (configuring it as it does);
    for weights that are only not in the cache yet, that line is noise before the real answer.
    """

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "_HeldLogs":
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)

    def replay(self) -> None:
        """To the root's handlers, where they were headed (a logger's own handlers had them already)."""
        for record in self.records:
            logging.getLogger().handle(record)


def message(what: str, reason: str) -> str:
    """One paragraph: which files, why not, and how to run with no network."""
    return f"cannot load {what}: {reason}. {OFFLINE_ROUTES}."


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when `url` answers at all (any HTTP status), else why not; one try, proxies as the environment sets them."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(exc).__name__
    return None


def _not_local_types() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return LocalEntryNotFoundError, OfflineModeIsEnabled


def _hub_failure_types() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    return EntryNotFoundError, HfHubHTTPError, ConnectionError, TimeoutError, urllib.error.URLError


def _in_chain(exc: BaseException, types: tuple[type[BaseException], ...], *, transport: bool = False) -> bool:
    """Whether `exc` or what caused it (open_clip and transformers wrap the hub's errors) is one of `types`.

    `transport`: an error of the hub's HTTP client (httpx, vendored as httpx2 by recent huggingface_hub).
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, types):
            return True
        if transport and type(exc).__module__.split(".")[0] in ("httpx", "httpx2"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False

