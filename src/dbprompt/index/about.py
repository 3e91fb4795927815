"""What a search page says about an index: what it holds, what made it, what to try first.

Everything comes from the index itself (manifest, prompt file copy, metadata): numbers the prompt
file does not record are left out, never guessed.
"""

from __future__ import annotations

import math
from typing import Any

from ..prompts.config import PromptConfig
from ..storage import PromptFileError, read_prompt_file, read_prompt_header
from ..training.config import HEADLINE  # what training selects its epoch on, and logs
from .calibration import weak_below
from .search import SearchIndex

EXAMPLES = 6
MAX_FOLDERS = 500  # a filter of more folders than this is no use as a list
# The most frequent tags listed, each with its count: a vocabulary of thousands would bloat every listing and
# is no use as a list; a rarer tag still filters (`tag=`), it is only not offered.
MAX_TAGS = 200


def describe(index: SearchIndex) -> dict[str, Any]:
    """The header, example queries, folder and tag filters and weak-match line of `index`'s search page."""
    info = index.info
    line, calibrated = weak_below(info.calibration)
    folders, tags = index.folders, index.tags
    return {
        "prompt_file": _text(info.prompt_source.get("name")),
        "prompt_modified": _text(info.prompt_source.get("modified")),
        **_training(index),
        "examples": index.sample_captions(EXAMPLES),
        "folders": dict(list(folders.items())[:MAX_FOLDERS]) if len(folders) > 1 else {},
        # A tag narrows a search unless it is the only one and every image has it.
        "tags": dict(list(tags.items())[:MAX_TAGS]) if len(tags) > 1 or sum(tags.values()) < info.count else {},
        "weak_below": line,
        "weak_calibrated": calibrated,
    }


def _training(index: SearchIndex) -> dict[str, Any]:
    """How the prompts were made: zero-shot, or trained on which database, with the validation R@1 of
    text-to-image search before training (epoch 0) and at the epoch kept, where the file records them."""
    try:  # dbprompt's own method from the file's header alone: a server on ONNX towers imports no torch
        _, method, options, extra = read_prompt_header(index.prompt_file)
        config = PromptConfig(**options) if method == "dbprompt" else read_prompt_file(index.prompt_file).config
    except (PromptFileError, OSError, TypeError):  # the index was checked when opened: this is a file changed since
        return {"prompts": None}
    kinds = getattr(config, "kinds", [])
    if not kinds:
        return {"prompts": "zero-shot"}
    found: dict[str, Any] = {"prompts": "+".join(kinds), "trained_on": _text(extra.get("database"))}
    if isinstance(extra.get("train_images"), int):
        found["train_images"] = extra["train_images"]
    history = [e for e in extra.get("history", []) if isinstance(e, dict)] if isinstance(extra.get("history"), list) else []
    before = next((e.get(HEADLINE) for e in history if e.get("epoch") == 0 and e.get("train_loss") is None), None)
    after = next((e.get(HEADLINE) for e in history if e.get("epoch") == extra.get("best_epoch")), None)
    if _number(before) and _number(after):
        found["val_r1"] = {"zero_shot": round(before, 2), "trained": round(after, 2), "epoch": extra["best_epoch"]}
    return found


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
