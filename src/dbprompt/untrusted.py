"""Reading what others wrote: JSON whose nesting is bounded, values quoted briefly in messages.

Metadata files, prompt files and index manifests come from anyone. A value nested thousands
of levels deep would otherwise end in a RecursionError (a traceback, not a message), and a
huge value quoted in full would bury the one line the user needs.
"""

from __future__ import annotations

import json
import reprlib
from typing import Any

# Deep enough for every file dbprompt writes (a prompt file's training history is 4 levels).
MAX_DEPTH = 32

_brief = reprlib.Repr()
_brief.maxstring = _brief.maxother = 60
_brief.maxlevel = 3


def brief(value: Any) -> str:
    """A short repr of a value from a file, for an error message (long or deep values are cut)."""
    return _brief.repr(value)


def loads(text: str | bytes, *, max_depth: int | None = MAX_DEPTH) -> Any:
    """`json.loads` that raises ValueError, never RecursionError, and refuses nesting past `max_depth`.

    `max_depth=None` skips the depth walk (for large files whose values are only type-checked).
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if max_depth is not None and depth(value) > max_depth:
        raise ValueError(f"JSON nested more than {max_depth} levels deep")
    return value


def depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in item)
    return deepest
