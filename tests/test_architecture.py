"""The package's shape: no import cycles (module-level or inside functions), flows below the
solvers, small solver modules that say what they own."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_flow_prior"
ROOT = "napari_flow_prior"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package): p for p in package.rglob("*.py")}


def imports(path: Path, known: dict[str, Path], package_dir: Path = PACKAGE) -> set[str]:
    """The package's modules that ``path`` imports anywhere in it (function bodies included)."""
    name = module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == ROOT)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != ROOT:
                continue
            for alias in node.names:  # `from . import tiling` imports a module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != name}


def find_cycles(package: Path = PACKAGE) -> list[list[str]]:
    known = modules(package)
    graph = {name: imports(path, known, package) for name, path in known.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_no_import_cycles():
    cycles = find_cycles()
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    """The check above can fail: two modules importing each other, one inside a function, are found."""
    package = tmp_path / ROOT
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from .b import g\n")
    (package / "b.py").write_text("from . import a\n")
    (package / "c.py").write_text("from .a import f\n")
    assert find_cycles(package) == [[f"{ROOT}.a", f"{ROOT}.b", f"{ROOT}.a"]]


def test_flows_import_nothing_from_the_solvers():
    known = modules()
    for name, path in known.items():
        if name.startswith(f"{ROOT}.flows"):
            assert not {m for m in imports(path, known) if m.startswith(f"{ROOT}.solvers")}, name


def test_solver_modules_are_small_and_say_what_they_own():
    for path in sorted((PACKAGE / "solvers").glob("*.py")):
        lines = path.read_text(encoding="utf-8").count("\n")
        assert lines <= 400, f"{path.name}: {lines} lines"
        assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path.name} has no docstring"
