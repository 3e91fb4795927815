"""The lab uses dbprompt's public interface only: no name starting with `_` from the product.

The product may rename or remove its private names at will; a lab that leans on them breaks
silently. The check reads every lab module with `ast` and flags, where the object is reached from
a name imported from dbprompt:
- `from dbprompt.x import _y`, and any import of a module `dbprompt._x`;
- attribute chains `name._y` / `name.a._y` (a module, class or function imported from dbprompt);
- `(name, "_y")` pairs in a tuple, list or call's arguments: getattr / setattr / patch by name;
- in a subclass of such a class: a method `_y` (overriding or adding to the product's private
  names) and `super()._y`.
It cannot follow values at run time (`trainer._step` on an instance of a product class goes
unseen); it is a tripwire for the plain cases, not a proof.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dbprompt_lab

LAB_SRC = Path(__file__).resolve().parents[1] / "src" / "dbprompt_lab"


def _private(name: str) -> bool:
    """`_x` is private; dunders (`__call__`, `__version__`) are Python's, not the product's."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _from_product(module: str | None) -> bool:
    return module is not None and module.split(".")[0] == "dbprompt"


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node


def _is_super(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def private_uses(source: str) -> list[str]:
    """`line: what` for each use of a private product name in one module's source."""
    tree = ast.parse(source)
    product: set[str] = set()  # local names bound to something imported from dbprompt
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _from_product(alias.name):
                    product.add(alias.asname or alias.name.split(".")[0])
                    found += [f"{node.lineno}: import {alias.name}"] if any(map(_private, alias.name.split("."))) else []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _from_product(node.module):
            for alias in node.names:
                product.add(alias.asname or alias.name)
                if _private(alias.name) or any(map(_private, node.module.split("."))):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")

    def rooted(node: ast.expr) -> bool:
        root = _root(node)
        return isinstance(root, ast.Name) and root.id in product

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and rooted(node.value):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ClassDef) and any(rooted(base) for base in node.bases):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(inner.name):
                    found.append(f"{inner.lineno}: {node.name}.{inner.name} in a subclass of a product class")
                elif isinstance(inner, ast.Attribute) and _private(inner.attr) and _is_super(inner.value):
                    found.append(f"{inner.lineno}: super().{inner.attr}")
        if isinstance(node, (ast.Tuple, ast.List, ast.Call)):
            items = node.elts if not isinstance(node, ast.Call) else node.args
            for owner, name in zip(items, items[1:]):
                if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value) and rooted(owner):
                    found.append(f"{node.lineno}: ({ast.unparse(owner)}, {name.value!r})")
    return sorted(set(found), key=lambda s: (int(s.split(":")[0]), s))


def test_the_check_sees_each_kind_of_use():
    source = """
import dbprompt.training.trainer as t
from dbprompt.index import build as build_module, _helper
from dbprompt.training.trainer import Trainer
from dbprompt_lab.bench import _ours
from dbprompt._vendored import thing
build_module._WorkDir.save
t.Trainer._step
Trainer.__call__, Trainer.run
parts = {(Trainer, "_micro_batch_loss"): 1, (Trainer, "__call__"): 2}
setattr(build_module, "_X", None)
_ours._y
class Traced(Trainer):
    def _record(self):
        super()._record()
    def run(self):
        return super().run()
"""
    assert [use.split(": ", 1)[1] for use in private_uses(source)] == [
        "from dbprompt.index import _helper",
        "from dbprompt._vendored import thing",
        "build_module._WorkDir",
        "t.Trainer._step",
        "(Trainer, '_micro_batch_loss')",
        "(build_module, '_X')",
        "Traced._record in a subclass of a product class",
        "super()._record",
    ]


def test_the_lab_uses_no_private_name_of_the_product():
    assert Path(dbprompt_lab.__file__).resolve().parent == LAB_SRC  # the sources checked are the ones imported
    modules = sorted(LAB_SRC.rglob("*.py"))
    assert len(modules) > 10
    found = {str(p.relative_to(LAB_SRC)): uses for p in modules if (uses := private_uses(p.read_text()))}
    assert found == {}, "private product names used by the lab:\n" + "\n".join(
        f"  {path}:{use}" for path, uses in found.items() for use in uses
    )
