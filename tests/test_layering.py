"""The package's layers: module-level imports form no cycle, and the book's maths never imports I/O."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gcg"

# chapters 01-06: torch and each other only
MATHS = ["gcg.schedules", "gcg.losses", "gcg.diffusion", "gcg.resample", "gcg.guidance", "gcg.cascade", "gcg.toy"]
# files, data sets, processes and command lines
IO = ["gcg.cli", "gcg.data", "gcg.train", "gcg.sample", "gcg.checkpoint", "gcg.presets", "gcg.evaluate", "gcg.dist",
      "gcg.inception", "gcg.features", "gcg.convert"]


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _top_level_imports(name):
    """The gcg modules that module ``name`` imports at module level (not inside functions)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{prefix}.{base}" if base else prefix
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


def test_module_level_imports_form_no_cycle():
    graph = {name: _top_level_imports(name) for name in MODULES}
    done, on_path = set(), []

    def visit(name):
        if name in on_path:
            cycle = on_path[on_path.index(name):] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        on_path.append(name)
        for child in sorted(graph[name]):
            visit(child)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


@pytest.mark.parametrize("name", MATHS)
def test_the_maths_modules_do_not_import_io(name):
    imported = _top_level_imports(name)
    assert not imported & set(IO), f"{name} imports {sorted(imported & set(IO))} at module level"


def test_the_import_graph_is_read_correctly():
    assert "gcg.nn.config" in _top_level_imports("gcg.nn.unet")
    assert {"gcg.losses", "gcg.schedules"} <= _top_level_imports("gcg.diffusion")  # relative imports
