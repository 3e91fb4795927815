"""Package attributes imported on first use, so light commands (`--help`) never import torch or FAISS."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: dict[str, Any], exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for a package whose names in `exports` live in the given modules."""

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        package[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(exports) | {k for k in package if not k.startswith("_")})

    return getattr_, dir_
