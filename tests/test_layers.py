"""The layers only point down: every import of every project file is checked against the rule
(ast, imports inside functions included), and the packages import each other without a cycle.

    1 configs/      the config schema's shared sections and pure definitions (no torch, no Lightning)
    2 datamodules/  formats, schema, layouts, codecs, readers, LightningDataModules
    3 modules/      nets, losses, metrics, LightningModules; of datamodules/ only the pure definitions
                    (never a file that defines a LightningDataModule)
    4 trainers/     the task table, config loading, building a run, callbacks, commands
    5 slurm/        launchers: they use trainers/, trainers/ does not use them ...
    6 trainers/cli  ... except the command-line entry point, which sits on top of everything
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "datamodules", "modules", "trainers", "slurm")
LAYER = {"configs": 1, "datamodules": 2, "modules": 3, "trainers": 4, "slurm": 5}
ENTRY_POINT = "trainers.cli"
HEAVY = ("torch", "pytorch_lightning", "lightning", "lightning_fabric")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.module, node.lineno)]
            # `from package import module` imports a module of the package
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names
                      if (REPO / Path(*node.module.split("."), f"{alias.name}.py")).is_file()]
    return found


def layer_of(module: str) -> int:
    return 6 if module == ENTRY_POINT else LAYER[module.split(".")[0]]


def source_of(module: str) -> Path | None:
    path = REPO / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path if path.is_file() else None


def defines_a_datamodule(module: str, seen: frozenset = frozenset()) -> bool:
    """A datamodules file that imports Lightning, itself or through other datamodules files: it holds
    or builds on a LightningDataModule."""
    path = source_of(module)
    if path is None or module in seen:
        return False
    for name, _ in imports_of(path):
        if name.split(".")[0] in ("pytorch_lightning", "lightning"):
            return True
        if name.startswith("datamodules.") and defines_a_datamodule(name, seen | {module}):
            return True
    return False


def violations(path: Path) -> list[str]:
    importer = module_name(path)
    found = []
    for imported, line in imports_of(path):
        top = imported.split(".")[0]
        where = f"{path.relative_to(REPO)}:{line} imports {imported}"
        if top in PACKAGES and layer_of(imported) > layer_of(importer):
            found.append(f"{where}: layer {layer_of(importer)} may not import layer {layer_of(imported)}")
        if importer.startswith("modules") and top == "datamodules" and defines_a_datamodule(imported):
            found.append(f"{where}: modules/ may use datamodules' pure definitions, never a LightningDataModule")
        if importer.startswith("configs") and top in HEAVY:
            found.append(f"{where}: configs/ stays free of torch and Lightning")
    return found


def package_graph() -> dict[str, set[str]]:
    """package -> packages it imports (the entry point is a node of its own)."""
    graph: dict[str, set[str]] = {name: set() for name in (*PACKAGES, ENTRY_POINT)}
    for path in project_files():
        importer = module_name(path)
        source = ENTRY_POINT if importer == ENTRY_POINT else importer.split(".")[0]
        for imported, _ in imports_of(path):
            target = ENTRY_POINT if imported == ENTRY_POINT else imported.split(".")[0]
            if target in graph and target != source:
                graph[source].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_every_import_points_down():
    found = [v for path in project_files() for v in violations(path)]
    assert not found, "\n".join(found)


def test_the_packages_import_each_other_without_a_cycle():
    assert find_cycle(package_graph()) is None, " -> ".join(find_cycle(package_graph()))


@pytest.mark.parametrize("source, expected", [
    ("from trainers.build import build_run\n", "layer 2 may not import layer 4"),
    ("def f():\n    from slurm.submit import submit\n", "layer 2 may not import layer 5"),
])
def test_the_rule_catches_an_upward_import_even_inside_a_function(source, expected):
    bad = REPO / "datamodules" / "_layer_probe.py"
    bad.write_text(source)
    try:
        assert any(expected in v for v in violations(bad))
    finally:
        bad.unlink()


def test_the_rule_catches_a_module_importing_a_datamodule_and_a_cycle():
    probe = REPO / "modules" / "_layer_probe.py"
    probe.write_text("from datamodules.faces import FaceIdentityDataModule\n")
    try:
        assert any("never a LightningDataModule" in v for v in violations(probe))
    finally:
        probe.unlink()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
