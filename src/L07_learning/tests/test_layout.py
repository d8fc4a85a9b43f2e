"""The package layout holds: imports follow the README's layer table, no import circle, a cheap torch-free import,
every shipped preset loads, no oversized file in ``services/``.

The import checks read the source with ``ast`` (nothing is imported), so a violation names the file, the line and
the import, whether it sits at module level or inside a function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from L07_learning.models.training_job import JobConfig
from L07_learning.services.fine_tuning_engine import load_preset

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PACKAGE = PACKAGE_DIR.name
REPO_ROOT = PACKAGE_DIR.parents[1]


def _readme_layers() -> dict[str, frozenset[str]]:
    """Layer -> the layers it may import, read from the README's layer table (so the table cannot drift).

    "root" is the package itself (``from .. import __version__``), which re-exports the models only.
    """
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    start = lines.index("| layer | folder | may import (L07) |") + 2
    allowed = {"root": frozenset({"models"})}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        _, folder, may = (cell.strip() for cell in line.strip("|").split("|"))
        layer = folder.strip("`").removesuffix("/").removesuffix(".py")
        names = frozenset() if may == "nothing" else frozenset(n.strip() for n in may.split(",")) | {"root"}
        allowed[layer] = names
    return allowed


ALLOWED = _readme_layers()
SERVICES_MAX_LINES = 600


@dataclass(frozen=True)
class Edge:
    """One import of an L07 module by another."""

    source: str
    target: str
    path: Path
    line: int
    module_level: bool
    type_checking: bool

    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def _module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))
            if "tests" not in p.relative_to(PACKAGE_DIR).parts}


def _layer(module: str) -> str:
    parts = module.split(".")
    return "root" if len(parts) == 1 else parts[1]


def _resolve(node: ast.ImportFrom | ast.Import, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The L07 modules an import statement loads (a ``from pkg import name`` names a submodule when one exists)."""
    if isinstance(node, ast.Import):
        names = [a.name.removeprefix("src.") for a in node.names]
        return [n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = (node.module or "").removeprefix("src.")
        if target != PACKAGE and not target.startswith(PACKAGE + "."):
            return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in known else target)
    return out


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _edges() -> list[Edge]:
    modules = _modules()
    known = set(modules)
    edges: list[Edge] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        top_level = {id(n) for n in tree.body}
        # Imports under module-level `if`/`try` run at import time too.
        for stmt in tree.body:
            if isinstance(stmt, (ast.If, ast.Try)):
                top_level.update(id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)))
        guarded = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _resolve(node, module, path.name == "__init__.py", known):
                edges.append(Edge(module, target, path, node.lineno, id(node) in top_level, node.lineno in guarded))
    return edges


def test_no_import_runs_up_a_layer() -> None:
    problems = []
    for e in _edges():
        src, dst = _layer(e.source), _layer(e.target)
        if src == dst:
            continue
        if src not in ALLOWED:
            problems.append(f"{e.where()}: layer '{src}' is missing from the README's layer table")
        elif dst not in ALLOWED[src]:
            kind = "module level" if e.module_level else "inside a function"
            problems.append(f"{e.where()}: {e.source} imports {e.target} ({kind}): layer '{src}' may not import "
                            f"'{dst}' (allowed: {', '.join(sorted(ALLOWED[src])) or 'nothing of L07'})")
    assert not problems, "imports against the layer table:\n" + "\n".join(problems)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


HEAVY = {"torch", "transformers", "peft", "trl", "datasets", "accelerate", "sklearn", "matplotlib", "scipy"}


def _imports_heavy_at_module_level(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    return bool(roots & HEAVY)


def test_l07_imports_inside_functions_only_defer_heavy_modules() -> None:
    # A reader learns what a file depends on from its head; only a module that loads torch & co. may be deferred.
    modules = _modules()
    problems = [f"{e.where()}: {e.source} imports {e.target} inside a function"
                for e in _edges()
                if not e.module_level and not e.type_checking and e.target in modules
                and not _imports_heavy_at_module_level(modules[e.target])]
    assert not problems, "L07 imports to move to module level:\n" + "\n".join(problems)


def test_no_import_circle_at_module_level() -> None:
    edges = [e for e in _edges() if e.module_level and not e.type_checking and e.source != e.target]
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    problems = []
    for component in _cycles(graph):
        members = set(component)
        links = [f"    {e.where()}: {e.source} -> {e.target}" for e in edges
                 if e.source in members and e.target in members]
        problems.append(f"circle between {', '.join(component)}:\n" + "\n".join(links))
    assert not problems, "module-level import circles:\n" + "\n".join(problems)


def test_relative_imports_resolve_to_the_module_they_load() -> None:
    known = {f"{PACKAGE}.store.db", f"{PACKAGE}.api.deps", f"{PACKAGE}.api"}
    up = ast.parse("from ..store.db import Database").body[0]
    sibling = ast.parse("from . import deps").body[0]
    assert _resolve(up, f"{PACKAGE}.api.app", False, known) == [f"{PACKAGE}.store.db"]
    assert _resolve(sibling, f"{PACKAGE}.api", True, known) == [f"{PACKAGE}.api.deps"]
    assert _layer(f"{PACKAGE}.store.db") not in ALLOWED["api"]


def test_tarjan_finds_a_circle_and_ignores_a_chain() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=180)


def test_importing_the_package_loads_no_torch() -> None:
    out = _python(f"import sys, {PACKAGE}; print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl') "
                  "if m in sys.modules))", REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"`import {PACKAGE}` loaded {out.stdout.strip()}"


def test_importing_any_services_module_loads_no_torch() -> None:
    names = sorted(m for m in _modules() if _layer(m) == "services")
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "    if 'torch' in sys.modules:\n"
            "        print(name); break\n")
    out = _python(code, REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip(), f"importing {out.stdout.strip()} loaded torch"


def test_star_import_from_the_repo_root() -> None:
    out = _python(f"from src.{PACKAGE} import *; print(TrainingExample.__name__, L07Error.__name__)", REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TrainingExample", "L07Error"]


@pytest.mark.parametrize("path", sorted((PACKAGE_DIR / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_into_a_job_config(path: Path) -> None:
    assert isinstance(load_preset(str(path)), JobConfig)


def test_configs_folder_is_not_empty() -> None:
    assert list((PACKAGE_DIR / "configs").glob("*.yaml"))


def test_no_file_in_services_exceeds_the_line_limit() -> None:
    too_long = {str(p.relative_to(REPO_ROOT)): n for p in sorted((PACKAGE_DIR / "services").rglob("*.py"))
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > SERVICES_MAX_LINES}
    assert not too_long, f"files in services/ over {SERVICES_MAX_LINES} lines: {too_long}"
