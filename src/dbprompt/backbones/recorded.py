"""The backbone a prompt file or an index records, loaded only from what is already on this machine.

Prompt files and index manifests come from anyone. What they record about their backbone must
never make dbprompt open a local path or contact a host the user did not name, so a recorded
backbone is loaded only as: weights shipped with dbprompt (or with an installed distribution, through
the `dbprompt.models` entry points: `model_dirs`), random weights of the small architectures shipped
so, or an open_clip tag / Hugging Face hub id whose files are already in the local
cache (the hub switched offline while loading). One more route is this machine's own: a backbone
the user named here before with `--model` (a directory, a checkpoint file) is remembered by its
fingerprint (`registry`), and a file recording that fingerprint loads through the route the user
named, never through the one the file names. Anything else is one error saying which
`--model/--pretrained` to add; the recorded fingerprint is checked either way.
"""

from __future__ import annotations

import re

import open_clip

from ..compat import BackboneId
from . import registry
from .base import BackboneAdapter
from .factory import LOCAL_DIR, RANDOM, load_backbone
from .model_dirs import known_model, shipped_config, shipped_weights
from .shim import hub_offline

# A hub repository id (org/name), the only form a recorded `hf-hub:`/`hf:` model may take.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
_HUB_SCHEMES = ("hf-hub:", "hf:")
_PATH_STARTS = ("/", ".", "~")


class RecordedBackboneError(ValueError):
    """A recorded backbone that cannot be loaded from this machine without a path or a download."""


def check_recorded_backbone(recorded: BackboneId, *, source: str = "") -> registry.Route | None:
    """Refuse, before anything is built, a recorded backbone that could open a path or a host, or
    make dbprompt build random weights the user never asked for (a multi-GB model, for one).

    Returns the route the user named on this machine for that fingerprint, when there is one: it
    is loaded instead of what the file records.
    """
    known = registry.lookup(recorded.fingerprint)
    if known is None:
        refusal = _refusal(recorded.name, recorded.pretrained)
        if refusal is not None:
            raise RecordedBackboneError(_message(source, recorded, refusal))
    return known


def load_recorded_backbone(recorded: BackboneId, *, device: str = "cpu", source: str = "") -> BackboneAdapter:
    """Load the backbone `source` (a prompt file or index) records, from local weights only.

    The caller checks the loaded backbone's fingerprint against the record (`compat.check_backbone`).
    """
    known = check_recorded_backbone(recorded, source=source)
    name, pretrained = (known.model, known.pretrained) if known else (recorded.name, recorded.pretrained)
    with hub_offline():
        try:
            backbone = load_backbone(name, pretrained, device=device, local_only=True)
            # Some towers' tokenizers come from the hub too: build it now, while offline.
            backbone.tokenize(["a"], backbone.context_length)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            failed = _first_line(exc)
            reason = _remembered(known, f"no longer loads ({failed})") if known else f"the weights are not on this machine ({failed})"
            raise RecordedBackboneError(_message(source, recorded, reason)) from None
    if known is not None and backbone.fingerprint() != recorded.fingerprint:
        reason = _remembered(known, f"now loads other weights (fingerprint {backbone.fingerprint()})")
        raise RecordedBackboneError(_message(source, recorded, reason))
    return backbone


def _refusal(name: str, pretrained: str | None) -> str | None:
    """Why loading (name, pretrained) as recorded could open a path or a host, or None when it cannot."""
    hub = next((name[len(s) :] for s in _HUB_SCHEMES if name.startswith(s)), None)
    if _names_path(name, hub, pretrained):
        return "that names a path, and no backbone with this fingerprint was named with --model on this machine"
    if hub is not None:
        if not _HUB_ID.fullmatch(hub):
            return "the hub model is not an org/name id"
    elif not known_model(name):
        return "no open_clip model and no model shipped with dbprompt (or an installed distribution) has that name"
    random = pretrained == RANDOM or (pretrained is None and hub is None and shipped_weights(name) is None)
    if random and (hub is not None or shipped_config(name) is None):
        # Only the small architectures dbprompt or an installed distribution ships; any other from a file is a
        # way to exhaust memory.
        return "random weights are built only when you ask for them (--pretrained random), never because a file says so"
    if pretrained in (None, RANDOM, name):
        return None
    if hub is None and pretrained in open_clip.list_pretrained_tags_by_model(name):
        return None
    return "those weights are neither shipped with dbprompt nor an open_clip tag of that model"


def _names_path(name: str, hub: str | None, pretrained: str | None) -> bool:
    """A directory (`local-dir:`, `hf:` and a path) or a checkpoint file: only ever the user's to name."""
    checkpoint = hub is None and any(c in (pretrained or "") for c in "/\\")
    return name.startswith(LOCAL_DIR) or (hub or "").startswith(_PATH_STARTS) or checkpoint


def _remembered(known: registry.Route, what: str) -> str:
    return f"`{known.flags()}`, which this machine remembers for that fingerprint ({registry.registry_path()}), {what}"


def _message(source: str, recorded: BackboneId, reason: str) -> str:
    """One paragraph: what the file records, why it is not loaded, and the exact flags that would load it."""
    where = f"{source}: " if source else ""
    return (
        f"{where}records backbone {recorded.name!r} with weights {recorded.pretrained!r} (fingerprint "
        f"{recorded.fingerprint}): {reason}. A backbone recorded in a file is loaded only from this machine (shipped "
        "weights, open_clip/Hugging Face weights already in the cache, or a backbone named here before with --model), "
        "never from a path or a download the file names: name it with --model and --pretrained, for what the file "
        f"records `{registry.flags(recorded.name, recorded.pretrained)}` (its fingerprint is still checked; once it "
        "loads it is remembered on this machine, and later commands need no --model)."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
