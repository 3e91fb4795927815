"""Option dataclasses are the one source of defaults and help text; the CLI's flags are built from them.

A field declared with `option(...)` carries its help text (as PEFT's configs do) and, where the
flag's name differs from the field's, the flag. `add_options` turns a dataclass into an argparse
group and `from_args` reads the group back, so `dbprompt train` and `dbprompt.train()` cannot
drift apart. Nothing here imports torch: `dbprompt --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Iterable, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, *, flag: str | None = None, cli: bool = True, **argparse_extra: Any) -> Any:
    """A dataclass field with its help text; `cli=False` keeps it out of the command line."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "cli": cli, "extra": argparse_extra})


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the type to parse, whether None is allowed) for int, float, str, bool and `X | None`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:  # Optional / union with None
        return args[0], True
    return hint, False


def add_options(
    parser: argparse.ArgumentParser, cls: type, title: str, *, skip: Iterable[str] = (), defaults: dict | None = None
) -> argparse._ArgumentGroup:
    """One argparse group with a flag per field of `cls` (those with `cli=False` or in `skip` left out)."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", False):
            continue
        default = defaults.get(f.name, f.default)
        kind, optional = _base_type(hints[f.name])
        extra = dict(f.metadata.get("extra", {}))
        text = f.metadata["help"] + (" (default: %(default)s)" if default is not None and kind is not bool else "")
        if kind is bool:
            state = "on" if default else "off" if default is not None else "auto"
            group.add_argument(
                flag_of(f), dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                help=f"{f.metadata['help']} (default: {state})",
            )
        else:
            metavar = None if "choices" in extra else flag_of(f).lstrip("-").upper().replace("-", "_")
            group.add_argument(flag_of(f), dest=f.name, type=kind, default=default, help=text, metavar=metavar, **extra)
    return group


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass from the fields the namespace has (others keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(values | overrides))


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def split_kwargs(kwargs: dict[str, Any], *classes: type) -> list[dict[str, Any]]:
    """Share keyword arguments out among option dataclasses; an unknown name is an error, not ignored."""
    out: list[dict[str, Any]] = []
    left = dict(kwargs)
    for cls in classes:
        names = field_names(cls)
        out.append({k: left.pop(k) for k in list(left) if k in names})
    if left:
        known = sorted(set().union(*(field_names(c) for c in classes)))
        raise TypeError(f"unknown option(s) {sorted(left)}; known: {', '.join(known)}")
    return out
