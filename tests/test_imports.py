"""The package's import graph has no cycles: every module can be read after the modules it imports."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "xpcnn"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, name: str, known: set) -> set:
    """The xpcnn modules ``path`` imports anywhere in it (inside functions too: a deferred import only hides a
    cycle). ``from . import x`` counts as importing the module ``x`` where it is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def test_the_package_has_no_import_cycles():
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    known = set(paths)
    graph = {name: _imports(path, name, known) for name, path in paths.items()}
    # a package's __init__ re-exports its submodules: an edge from a submodule to its own package is how it
    # reaches a sibling, not a cycle through the package; count it as an edge to what the package imports
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_package_ships_its_license_changelog_and_type_marker():
    import importlib.resources

    root = pathlib.Path(__file__).resolve().parents[1]
    assert "MIT License" in (root / "LICENSE").read_text()
    assert 'license = "MIT"' in (root / "pyproject.toml").read_text()
    assert (root / "CHANGELOG.md").read_text().startswith("# Changelog")
    assert importlib.resources.files("xpcnn").joinpath("py.typed").is_file()
    assert '"xpcnn" = ["py.typed"]' in (root / "pyproject.toml").read_text()


def test_functional_is_pure():
    """The layering rule: xpcnn/functional/ imports nothing of xpcnn outside itself, no array library, and opens
    no file, reads no setting and keeps no global state (what a measured-route cache in $HOME once broke)."""
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    known = set(paths)
    for name, path in sorted(paths.items()):
        if not name.startswith("xpcnn.functional"):
            continue
        outside = {m for m in _imports(path, name, known) if not m.startswith("xpcnn.functional")}
        assert not outside, f"{name} imports {sorted(outside)}"
        tree = ast.parse(path.read_text())
        modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names}
        modules |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and not node.level}
        assert not modules & {"numpy", "cupy", "torch", "jax", "os", "pathlib", "io", "threading"}, (name, modules)
        calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name)}
        assert "open" not in calls, f"{name} opens a file"
        assert not [node for node in ast.walk(tree) if isinstance(node, ast.Global)], f"{name} rebinds a global"
