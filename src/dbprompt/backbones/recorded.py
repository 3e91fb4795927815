"""The backbone a prompt file or an index records, loaded only from what is already on this machine.

Prompt files and index manifests come from anyone. What they record about their backbone must
never make dbprompt open a local path or contact a host the user did not name, so a recorded
backbone is loaded only as: weights shipped with dbprompt, random weights of an architecture
open_clip knows, or an open_clip tag / Hugging Face hub id whose files are already in the local
cache (the hub switched offline while loading). Anything else is one error saying to name the
backbone with `--model/--pretrained`; the recorded fingerprint is checked either way.
"""

from __future__ import annotations

import re

import open_clip

from .base import BackboneAdapter
from .factory import MODEL_CONFIG_DIR, RANDOM, load_backbone, shipped_weights
from .shim import hub_offline

# A hub repository id (org/name), the only form a recorded `hf-hub:`/`hf:` model may take.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
_HUB_SCHEMES = ("hf-hub:", "hf:")


class RecordedBackboneError(ValueError):
    """A recorded backbone that cannot be loaded from this machine without a path or a download."""


def check_recorded_backbone(name: str, pretrained: str | None, *, source: str = "") -> None:
    """Refuse, before anything is built, a recorded backbone that could open a path or a host, or
    make dbprompt build random weights the user never asked for (a multi-GB model, for one)."""
    refusal = _refusal(name, pretrained)
    if refusal is not None:
        raise RecordedBackboneError(_message(source, name, pretrained, refusal))


def load_recorded_backbone(
    name: str, pretrained: str | None, *, device: str = "cpu", source: str = ""
) -> BackboneAdapter:
    """Load the backbone `source` (a prompt file or index) records, from local weights only.

    The caller checks the loaded backbone's fingerprint against the record (`compat.check_backbone`).
    """
    check_recorded_backbone(name, pretrained, source=source)
    with hub_offline():
        try:
            backbone = load_backbone(name, pretrained, device=device)
            # Some towers' tokenizers come from the hub too: build it now, while offline.
            backbone.tokenize(["a"], backbone.context_length)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            reason = f"the weights are not on this machine ({_first_line(exc)})"
            raise RecordedBackboneError(_message(source, name, pretrained, reason)) from None
    return backbone


def _refusal(name: str, pretrained: str | None) -> str | None:
    """Why loading (name, pretrained) as recorded could open a path or a host, or None when it cannot."""
    hub = next((name[len(s) :] for s in _HUB_SCHEMES if name.startswith(s)), None)
    if hub is not None:
        if not _HUB_ID.fullmatch(hub):
            return "the hub model is not an org/name id"
    elif name not in open_clip.list_models():
        return "no open_clip model and no model shipped with dbprompt has that name"
    random = pretrained == RANDOM or (pretrained is None and hub is None and shipped_weights(name) is None)
    if random and (hub is not None or not (MODEL_CONFIG_DIR / f"{name}.json").is_file()):
        # Only dbprompt's own small test architectures; any other from a file is a way to exhaust memory.
        return "random weights are built only when you ask for them (--pretrained random), never because a file says so"
    if pretrained in (None, RANDOM, name):
        return None
    if hub is None and pretrained in open_clip.list_pretrained_tags_by_model(name):
        return None
    return "those weights are neither shipped with dbprompt nor an open_clip tag of that model"


def _message(source: str, name: str, pretrained: str | None, reason: str) -> str:
    where = f"{source}: " if source else ""
    return (
        f"{where}records backbone {name!r} with weights {pretrained!r}: {reason}. A backbone recorded in a file "
        "is loaded only from this machine (shipped weights, or open_clip/Hugging Face weights already in the "
        "cache), never from a path or a download: name it with --model and --pretrained (its fingerprint is "
        "still checked)."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
