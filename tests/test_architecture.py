"""House rules of the package layout: one module one job, imports only point down, README imports work.

What counts as an import (for the cycle check): every ``import`` / ``from ... import`` statement in a
hooksteer module, read statically (nothing is imported), wherever it sits -

* at module level,
* inside functions and methods (a lazy import is still a dependency: ``cli -> hypersteer.demo -> cli``
  was a cycle made only of function-level imports),
* under ``if TYPE_CHECKING:`` (a type-only import still ties the two modules together: ``report`` naming
  ``protocol.EvaluationResult`` while ``protocol`` called ``report`` was a cycle),

with relative imports resolved against the importing module. ``from package import name`` is an edge to
``package.name`` when that is a module, else to ``package``. The parent packages Python initialises on
the way (``import a.b.c`` runs ``a/__init__`` and ``a/b/__init__``) are not edges: a package's
``__init__`` re-exporting its submodules is the intended direction, and a submodule that imports from its
own package's ``__init__`` still shows up as a cycle through that explicit import.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hooksteer"
README = ROOT / "README.md"

#: A module longer than this does more than one job: "about 450 lines", so a few lines over 450 pass.
MAX_LINES = 500
#: A line of four or more "=" after a comment sign: the banner that splits a file into sections.
BANNER = re.compile(r"^\s*#\s*={4,}")

#: Modules that still break a layout rule, with why. Each is a strict expected failure until it is split;
#: then the test passes unexpectedly, which fails and asks for the entry to be removed here.
KNOWN_BANNERS: dict[str, str] = {}
KNOWN_LONG: dict[str, str] = {}


# -------------------------------------------------------------------------------------- import graph
def package_modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (path, is_package)}`` for every ``.py`` file under ``root / package``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of the module: module level, in functions, under ``if TYPE_CHECKING``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def _known(modules: dict[str, tuple[Path, bool]], dotted: str) -> str | None:
    """``dotted`` or its longest prefix that is a module of the package (None for outside modules)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imported_modules(name: str, modules: dict[str, tuple[Path, bool]]) -> set[str]:
    """The package's modules that module ``name`` imports (rules in this file's docstring)."""
    path, is_package = modules[name]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        found.update(module for module in map(lambda t: _known(modules, t), targets) if module is not None)
    found.discard(name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = package_modules(root, package)
    return {name: imported_modules(name, modules) for name in modules}


def test_no_import_cycle_between_hooksteer_modules():
    graph = import_graph(ROOT, PACKAGE)
    assert len(graph) > 50, "the walk found the package's modules"
    cycles = import_cycles(graph)
    details = [" <-> ".join(cycle) + "\n    " + "\n    ".join(
        f"{member} imports {sorted(graph[member] & set(cycle))}" for member in cycle) for cycle in cycles]
    assert not cycles, "import cycles between hooksteer modules:\n" + "\n".join(details)


def test_cycle_check_sees_lazy_type_only_relative_and_package_imports(tmp_path):
    """The walker itself: each kind of import in the module docstring closes a cycle it reports."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg import b\n",                               # lazy, absolute
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n",  # type-only, relative
        "c.py": "import pkg.sub.d\n",
        "sub/__init__.py": "from pkg.sub.d import x\n",                          # re-export: not a cycle
        "sub/d.py": "x = 1\nfrom ..c import *\n",                                 # relative, two levels
        "e.py": "import os\nfrom pkg.sub import x\n",                            # name from a package
        "lone.py": "from pkg import e\n",
    }
    for relative, text in files.items():
        (package / relative).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.e"] == {"pkg.sub"} and graph["pkg.lone"] == {"pkg.e"}
    assert graph["pkg.sub"] == {"pkg.sub.d"}
    assert sorted(import_cycles(graph)) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub.d"]]


# -------------------------------------------------------------------------------------- README imports
def _readme_python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def readme_imports() -> list[str]:
    """Every ``import`` / ``from ... import`` line of the README's python code blocks."""
    lines = [line.strip() for block in _readme_python_blocks() for line in block.splitlines()]
    return [line for line in lines if re.match(r"(import|from)\s+\S+", line)]


def test_readme_has_python_imports_to_check():
    imports = readme_imports()
    assert "import hooksteer as hs" in imports and len(imports) >= 4, imports


@pytest.mark.parametrize("line", readme_imports())
def test_readme_import_line_works(line):
    """Each import line of the README's code blocks runs (the names it imports exist where it says)."""
    node = ast.parse(line).body[0]
    if isinstance(node, ast.Import):
        for alias in node.names:
            importlib.import_module(alias.name)
        return
    module = importlib.import_module(node.module)
    missing = [alias.name for alias in node.names if not hasattr(module, alias.name)
               and importlib.util.find_spec(f"{node.module}.{alias.name}") is None]
    assert not missing, f"{line!r}: {node.module} has no {missing}"


def _resolve(dotted: str) -> object:
    """The module or attribute that ``dotted`` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


def readme_names() -> list[str]:
    """``hs.name`` chains and ``hooksteer.`` / ``analysis.`` names in the python blocks and in backticks."""
    text = "\n".join([*_readme_python_blocks(), *re.findall(r"`([^`\n]+)`", README.read_text())])
    names = {"hooksteer." + chain for chain in re.findall(r"\bhs\.([A-Za-z_][\w.]*[A-Za-z0-9_])", text)}
    names.update(re.findall(r"\b((?:hooksteer|analysis)\.[A-Za-z_][\w.]*[A-Za-z0-9_])", text))
    return sorted(names)


@pytest.mark.parametrize("dotted", readme_names())
def test_readme_names_resolve(dotted):
    """``hs.load_model``, ``hooksteer.data.splits``, ``hooksteer.testing.tiny_model``... all exist."""
    assert _resolve(dotted) is not None


# -------------------------------------------------------------------------------------- entry points
def test_python_dash_m_hooksteer_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "hooksteer", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: hooksteer") and "evaluate" in done.stdout


# -------------------------------------------------------------------------------------- one module one job
def _relative_modules() -> list[str]:
    return sorted(str(path.relative_to(ROOT)) for path, _ in package_modules(ROOT, PACKAGE).values())


def _expected_failure(module: str, known: dict[str, str]) -> object:
    if module in known:
        return pytest.param(module, marks=pytest.mark.xfail(strict=True, reason=known[module]))
    return module


@pytest.mark.parametrize("module", [_expected_failure(m, KNOWN_BANNERS) for m in _relative_modules()])
def test_no_section_banners(module):
    """``# ====`` banners split a file into jobs; such a file should be a package with one module per job."""
    lines = (ROOT / module).read_text().splitlines()
    banners = [number for number, line in enumerate(lines, 1) if BANNER.match(line)]
    assert not banners, f"{module}: '# ====' section banners at lines {banners}; make it a package"


@pytest.mark.parametrize("module", [_expected_failure(m, KNOWN_LONG) for m in _relative_modules()])
def test_module_is_not_too_long(module):
    """No module over about 450 lines: a longer one does several jobs (make it a package, one module per job)."""
    length = len((ROOT / module).read_text().splitlines())
    assert length <= MAX_LINES, f"{module}: {length} lines (> {MAX_LINES}); make it a package, one module per job"


def test_known_exceptions_exist():
    modules = set(_relative_modules())
    assert set(KNOWN_BANNERS) <= modules and set(KNOWN_LONG) <= modules, "remove entries for removed modules"
