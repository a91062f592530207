"""pyproject.toml declares what the code imports, and the code uses what pyproject.toml declares.

Every import of every file (inside functions too) is read with ``ast``; a third-party module is
mapped to the installed distribution that provides it (``importlib.metadata``). The library's
code may import only its dependencies and optional extras, the tests and benchmarks also the
``test`` extra; and every dependency must be imported by the library's code (a dependency used by
nothing is dead weight on every install).
"""
from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("configs", "datamodules", "modules", "trainers", "slurm")
LOCAL = set(LIBRARY) | {"tests", "benchmarks"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.match(r"[A-Za-z0-9_.-]+", requirement.strip()).group(0))


def declared() -> tuple[set[str], set[str], set[str]]:
    """(dependencies, optional extras other than test, the test extra) as normalised names."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    runtime = {requirement_name(r) for r in project["dependencies"]}
    optional = {requirement_name(r) for name, reqs in extras.items() if name != "test" for r in reqs}
    return runtime, optional, {requirement_name(r) for r in extras.get("test", [])}


def top_level_imports(folder: Path) -> dict[str, list[str]]:
    """Top-level module -> the files importing it, for every .py file under ``folder``."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(REPO)))
    return found


def third_party(imports: dict[str, list[str]], folder: Path | None = None) -> dict[str, list[str]]:
    """Less the standard library, Visage's packages and ``folder``'s own modules (scripts importing a sibling)."""
    siblings = {p.stem for p in folder.glob("*.py")} if folder else set()
    return {name: files for name, files in imports.items()
            if name not in LOCAL | siblings and name not in sys.stdlib_module_names and name != "__future__"}


@functools.cache
def installed() -> dict[str, list[str]]:
    return packages_distributions()


def distributions_of(module: str) -> set[str]:
    """The installed distributions providing ``module``; for one not installed here (an optional
    extra such as onnx), the distribution of the same name."""
    return {normalise(d) for d in installed().get(module, [normalise(module)])}


def library_imports() -> dict[str, list[str]]:
    imports: dict[str, list[str]] = {}
    for package in LIBRARY:
        for name, files in top_level_imports(REPO / package).items():
            imports.setdefault(name, []).extend(files)
    return third_party(imports)


def test_the_library_imports_only_what_it_declares():
    runtime, optional, _ = declared()
    undeclared = {name: files[:3] for name, files in library_imports().items()
                  if not distributions_of(name) & (runtime | optional)}
    assert not undeclared, f"imported but not declared in [project.dependencies]: {undeclared}"


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_tests_and_benchmarks_import_only_what_is_declared(folder):
    runtime, optional, test = declared()
    imports = third_party(top_level_imports(REPO / folder), REPO / folder)
    undeclared = {name: files[:3] for name, files in imports.items()
                  if not distributions_of(name) & (runtime | optional | test)}
    assert not undeclared, f"imported but declared nowhere (add it to the test extra): {undeclared}"


def test_every_dependency_is_imported_by_the_library():
    runtime, _, _ = declared()
    used = set().union(*(distributions_of(name) for name in library_imports()))
    assert runtime - used == set(), f"declared but imported by no library file: {sorted(runtime - used)}"


def test_lightning_fabric_is_reached_through_pytorch_lightning():
    """pytorch-lightning's wheel carries the lightning_fabric package; importing it by that name
    would need a lightning-fabric requirement, whose distribution would overwrite those files."""
    assert "lightning_fabric" not in library_imports()
