"""The layout stays readable: no two modules import each other, however indirectly (imports inside
functions and under TYPE_CHECKING count too), and README.md's file map names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGES = ("resnet_exp", "analysis")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules that `path` (module `name`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .y import z
                base = ".".join(
                    [
                        *package.split(".")[: len(package.split(".")) - node.level + 1],
                        *([base] if base else []),
                    ]
                )
            # `from pkg import mod` imports the module pkg.mod where there is one
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # resnet_exp.x.y.attr -> the module that holds it
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, name, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    assert len(graph) > 40 and graph["resnet_exp.sweep.run"], "the import graph went missing"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path):
    """The check above could pass by finding nothing: a cycle made of a top-level import and an
    import inside a function must be found."""
    a = "from resnet_exp.b import f\n"
    b = "def f():\n    from resnet_exp.a import g\n"
    known = {"resnet_exp.a": Path("a.py"), "resnet_exp.b": Path("b.py")}
    graph = {}
    for name, text in (("resnet_exp.a", a), ("resnet_exp.b", b)):
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        graph[name] = imports_of(path, name, known)
    assert cycles(graph) == [["resnet_exp.a", "resnet_exp.b"]]


def file_map() -> set[str]:
    """Paths named in README.md's file map: a line 'folder/' opens a folder for the lines indented
    under it; a line's first column lists names, comma-separated."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"^## File map\s+```\n(.*?)^```", text, flags=re.M | re.S)
    assert block, "README.md has no file map"
    named: set[str] = set()
    folders: list[tuple[int, str]] = []  # (indent, path) of the open folders
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        folders = [(i, f) for i, f in folders if i < indent]
        head = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        prefix = folders[-1][1] if folders else ""
        for entry in (e.strip() for e in head.split(",")):
            path = prefix + entry
            named.add(path.rstrip("/"))
            if entry.endswith("/"):
                folders.append((indent, path))
    return named


def test_the_file_map_names_every_module():
    named = file_map()
    files = [
        p.relative_to(REPO).as_posix()
        for package in (*PACKAGES, "benchmarks")
        for p in sorted((REPO / package).rglob("*.py"))
    ]
    # a package's __init__.py is named by its folder's line
    missing = [
        f
        for f in files
        if f not in named
        and not (f.endswith("/__init__.py") and f.removesuffix("/__init__.py") in named)
    ]
    assert not missing, f"README.md's file map does not name {missing}"
    stale = sorted(n for n in named if n.endswith(".py") and not (REPO / n).exists())
    assert not stale, f"README.md's file map names files that do not exist: {stale}"
