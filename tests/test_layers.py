"""The architecture is checked, not described: the import contracts in pyproject.toml
([tool.importlinter]: pure packages, layers) hold, they catch a violation, and no themis module
is part of an import cycle."""

from __future__ import annotations

import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

import themis

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports puts its working folder first on sys.path, so it analyses the themis found there.
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_hold() -> None:
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_every_top_level_module_has_a_layer() -> None:
    """A new module or package under themis/ must be placed in the layers, or nothing checks it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}
    layered = {name for layer in contracts["layers"]["layers"] for name in re.split(r"[|:]", layer)}
    top = {f"themis.{m.name}" for m in pkgutil.iter_modules(themis.__path__)}
    assert top - {n.strip() for n in layered} == set()


def test_import_contracts_catch_violations(tmp_path: Path) -> None:
    """A copy of the package with one pure module that imports torch and reaches up into serving."""
    copy = tmp_path / "themis"
    shutil.copytree(ROOT / "themis", copy, ignore=shutil.ignore_patterns("__pycache__", "static", "data"))
    (copy / "judge" / "violation.py").write_text("import torch\n\nfrom themis.serving import guard\n")
    out = _lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "themis.judge.violation -> torch" in out.stdout
    assert "themis.judge.violation -> themis.serving.guard" in out.stdout
    assert "Contracts: 1 kept, 2 broken." in out.stdout


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
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
                    cycles.append(sorted(component))
    return cycles


def test_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_no_import_cycles() -> None:
    # Imports under `if TYPE_CHECKING:` never run, so they cannot make a cycle.
    graph = grimp.build_graph("themis", exclude_type_checking_imports=True)
    cycles = import_cycles(graph)
    details = [
        f"{a} -> {b} (l.{[d['line_number'] for d in graph.get_import_details(importer=a, imported=b)]})"
        for cycle in cycles
        for a in cycle
        for b in cycle
        if b in graph.find_modules_directly_imported_by(a)
    ]
    assert not cycles, "import cycles:\n" + "\n".join(details)
