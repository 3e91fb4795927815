"""Prompt methods by name (PEFT's tuner registry): dbprompt's own, and those other packages register.

dbprompt has one method, "dbprompt" (the one that won on validation). Other packages (the lab's
baselines) register theirs with `register_method`, or through the entry point group
`dbprompt.prompt_methods`, so a prompt file one of them wrote loads wherever that package is installed.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from .learner import PromptLearner
from .method import PromptMethod

ENTRY_POINTS = "dbprompt.prompt_methods"
_REGISTRY: dict[str, type[PromptMethod]] = {PromptLearner.name: PromptLearner}


def register_method(cls: type[PromptMethod]) -> type[PromptMethod]:
    """Make a method known by its name (a class decorator); a second class under one name is refused."""
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"prompt method {cls.name!r} is registered twice ({_REGISTRY[cls.name].__module__}, {cls.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def method_named(name: str) -> type[PromptMethod]:
    """The registered method of this name, looking at installed packages' entry points when not yet known."""
    if name not in _REGISTRY:
        for ep in entry_points(group=ENTRY_POINTS, name=name):
            register_method(ep.load())
    if name not in _REGISTRY:
        raise ValueError(
            f"prompt method {name!r} is not installed: it comes from a package that registers it with dbprompt "
            f"(dbprompt-lab registers the literature's baselines); this dbprompt knows {sorted(_REGISTRY)}"
        )
    return _REGISTRY[name]


def method_of(config: Any) -> type[PromptMethod]:
    """The registered method whose config class `config` is an instance of."""
    for cls in _REGISTRY.values():
        if type(config) is cls.config_class:
            return cls
    raise TypeError(f"{type(config).__name__} is not the config of a registered prompt method")
