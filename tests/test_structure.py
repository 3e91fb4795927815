"""The product stands apart from the lab: dbprompt and its tests import nothing of dbprompt_lab, its wheel
holds none of it, and it has no import cycle."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dbprompt

SRC = Path(dbprompt.__file__).resolve().parent.parent
REPO = SRC.parent
TESTS = Path(__file__).resolve().parent
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside functions, except under `if TYPE_CHECKING`."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            # `from . import x` imports the submodule x when there is one.
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                if (SRC / Path(*candidate.split("."))).with_suffix(".py").exists() or (SRC / Path(*candidate.split(".")) / "__init__.py").exists():
                    found.add(candidate)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph(package: str) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (SRC / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _imports(path):
            parts = target.split(".")
            # Importing a.b.c runs a and a.b first, unless the importer is inside them (already running).
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name and not (name + ".").startswith(prefix + "."):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def test_the_product_never_imports_the_lab():
    offenders = {
        _module_name(p): sorted(m for m in _imports(p) if m.split(".")[0] == "dbprompt_lab")
        for p in (SRC / "dbprompt").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _lab_imports(path: Path) -> list[str]:
    """`line: module` for each import of dbprompt_lab in `path`: statements, and import_module / importorskip /
    __import__ calls naming it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in ("import_module", "importorskip", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [f"{node.lineno}: {name}" for name in names if name.split(".")[0] == "dbprompt_lab"]
    return found


def test_the_product_s_tests_never_import_the_lab():
    """The product is tested alone: its tests make their own data (tinydata.py), the lab tests itself (lab/tests)."""
    offenders = {str(p.relative_to(TESTS)): found for p in sorted(TESTS.rglob("*.py")) if (found := _lab_imports(p))}
    assert offenders == {}


def test_the_lab_check_sees_imports_in_every_form(tmp_path):
    source = "import dbprompt_lab.world\nfrom dbprompt_lab import bench\nimport importlib\nimportlib.import_module('dbprompt_lab.proxy')\n"
    (tmp_path / "t.py").write_text(source + "from dbprompt import cli\nimport dbprompt_labels\n")
    assert _lab_imports(tmp_path / "t.py") == ["1: dbprompt_lab.world", "2: dbprompt_lab", "4: dbprompt_lab.proxy"]


@pytest.mark.slow  # packs the 26 MB proxy weights: a few seconds
def test_the_wheel_holds_the_product_and_its_weights_and_nothing_of_the_lab(tmp_path):
    """Built from a copy of what the wheel is made of, so that the build leaves nothing in the checkout."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(SRC, tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "out"), str(tree)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "out").glob("dbprompt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if "dbprompt_lab" in n] == []
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"dbprompt"}
    assert {"dbprompt/assets/models/dbprompt-proxy.safetensors", "dbprompt/cli/__init__.py"} <= set(names)


def test_no_import_cycle_in_the_product():
    graph = _graph("dbprompt")
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    assert cycles == []


def test_the_graph_sees_function_level_imports(tmp_path):
    """The cycle check counts an import inside a function, as the cli -> demo -> cli cycle was."""
    graph = _graph("dbprompt")
    assert "dbprompt.api" in graph["dbprompt.cli.train"]  # imported inside `run`


def test_modules_stay_readable():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_help_does_not_import_torch():
    """`dbprompt --help` must answer at once: nothing heavy is imported to build the parser."""
    code = "import sys; from dbprompt.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'open_clip', 'faiss') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_torch_ranges_hold_the_pins_ci_tests_and_the_installed_versions():
    """pyproject.toml accepts ranges; CI installs constraints.txt's pins, the other end is constraints-oldest.txt."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    ranges = {r.name: r.specifier for r in map(Requirement, tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])}
    for name in ("constraints.txt", "constraints-oldest.txt"):
        pins = [Requirement(line) for line in (REPO / name).read_text().splitlines() if line and not line.startswith("#")]
        assert {p.name for p in pins} == {"torch", "torchvision"}, name
        for pin in pins:
            (pinned,) = pin.specifier
            assert pinned.operator == "==" and ranges[pin.name].contains(pinned.version), (name, pin)
    for name in ("torch", "torchvision"):
        assert ranges[name].contains(version(name).split("+")[0]), name
