"""The import graph of khar_mmsa, read with ``ast`` (imports inside functions included): no cycle,
and the layering rules (model/ never imports losses/ or io/; only registration/, runs/ and
prediction/ import MMSA)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "khar_mmsa"
#: Calls that import the module named by their first (literal string) argument.
IMPORTING_CALLS = ("import_module", "mmsa_module", "find_spec")
#: The packages that touch MMSA: what ``import khar_mmsa`` adds to it, one ``MMSA_run``, ``MMSA_test``.
MMSA_PACKAGES = ("khar_mmsa.registration", "khar_mmsa.runs", "khar_mmsa.prediction")
#: Modules outside :data:`MMSA_PACKAGES` allowed to import MMSA, and why.
MMSA_IMPORT_EXCEPTIONS = {
    # the README's first command is an example of a user's script: it calls MMSA's public MMSA_run
    # exactly as a user does after `import khar_mmsa`
    "khar_mmsa.demo": "runs MMSA's public MMSA_run as a user does",
}


def module_files(package: Path = PACKAGE) -> Dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package."""
    files = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def imported_names(path: Path, module: str) -> Set[str]:
    """Every dotted name ``path`` imports, anywhere in the file (module level or in a function):
    ``import x.y``, ``from x.y import z`` (as ``x.y.z``: the module ``z`` of the package, or the
    name ``z`` of the module ``x.y``), relative imports resolved, and the literal first argument of
    :data:`IMPORTING_CALLS`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)  # a module, or a name in ``base``
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) in IMPORTING_CALLS:
                names.add(node.args[0].value)
    return names


def import_graph(files: Dict[str, Path]) -> Dict[str, Set[str]]:
    """``{module: the modules of the package it imports}`` (a ``from a import b`` of a
    function or class counts as importing ``a``; a package's own ``__init__`` is not counted as
    imported by its modules' imports of each other)."""
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path, module):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def files() -> Dict[str, Path]:
    return module_files()


@pytest.fixture(scope="module")
def graph(files: Dict[str, Path]) -> Dict[str, Set[str]]:
    return import_graph(files)


def test_the_graph_sees_imports_inside_functions(graph):
    """What the cycle check relies on: the runner imports tuning only inside ``run``."""
    assert "khar_mmsa.tuning" in graph["khar_mmsa.runs.runner"]
    assert "khar_mmsa.runs.runner" in graph["khar_mmsa.registration.entry_points"]


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_model_imports_nothing_from_losses_or_io(graph):
    bad = {m: sorted(t for t in targets if t.startswith(("khar_mmsa.losses", "khar_mmsa.io")))
           for m, targets in graph.items() if m.startswith("khar_mmsa.model")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_only_the_mmsa_packages_import_mmsa(files):
    bad = sorted(module for module, path in files.items()
                 if not module.startswith(MMSA_PACKAGES) and module not in MMSA_IMPORT_EXCEPTIONS
                 and any(name == "MMSA" or name.startswith("MMSA.") for name in imported_names(path, module)))
    assert bad == []


def test_the_runner_names_the_trainer_it_calls(files):
    """runner -> trainer can be followed in the code: KHaRTrainer is imported by name, not looked up
    through MMSA's ``ATIO().getTrain`` and a class name in a string."""
    names = imported_names(files["khar_mmsa.runs.model_and_trainer"], "khar_mmsa.runs.model_and_trainer")
    assert "khar_mmsa.training.trainer.KHaRTrainer" in names and "khar_mmsa.model.khar.KHaR" in names
    assert "khar_mmsa.runs.model_and_trainer" in import_graph(files)["khar_mmsa.runs.runner"]
