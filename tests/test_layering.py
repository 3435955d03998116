"""The package's layers: module-level imports form no cycle, the book's maths never imports I/O,
and the trainer (gcg.training) is layered below its command line."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gcg"

# chapters 01-06: torch and each other only
MATHS = ["gcg.schedules", "gcg.losses", "gcg.diffusion", "gcg.resample", "gcg.guidance", "gcg.cascade", "gcg.toy"]
# files, data sets, processes and command lines
IO = ["gcg.cli", "gcg.data", "gcg.train", "gcg.sample", "gcg.checkpoint", "gcg.presets", "gcg.evaluate", "gcg.dist",
      "gcg.inception", "gcg.features", "gcg.convert", "gcg.training"]
# the trainer's modules in the order of gcg/training/__init__.py: each imports only those before it
TRAINING = ["gcg.training.config", "gcg.training.presets", "gcg.training.overrides", "gcg.training.tasks",
            "gcg.training.state", "gcg.training.build", "gcg.training.step", "gcg.training.monitor",
            "gcg.training.signals", "gcg.training.loop"]
# imports allowed inside functions of the trainer: optional or heavy packages a run may not need
DEFERRED = {"matplotlib.figure", "torch.utils.tensorboard"}


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
IO_MODULES = {m for m in MODULES if any(m == io or m.startswith(io + ".") for io in IO)}


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


def _reachable(name):
    """Every gcg module that importing ``name`` loads at module level (transitively)."""
    seen, todo = set(), [name]
    while todo:
        for child in _top_level_imports(todo.pop()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


@pytest.mark.parametrize("name", MATHS)
def test_the_maths_modules_do_not_import_io(name):
    imported = _top_level_imports(name)
    assert not imported & IO_MODULES, f"{name} imports {sorted(imported & IO_MODULES)} at module level"
    loaded = _reachable(name)
    assert not loaded & IO_MODULES, f"importing {name} loads {sorted(loaded & IO_MODULES)}"


def test_training_modules_are_all_listed():
    assert {m for m in MODULES if m.startswith("gcg.training.")} == set(TRAINING)


@pytest.mark.parametrize("name", TRAINING)
def test_the_trainer_is_layered_and_imports_no_command_line(name):
    loaded = _reachable(name)
    assert not loaded & {"gcg.train", "gcg.cli"}, f"importing {name} loads {sorted(loaded & {'gcg.train', 'gcg.cli'})}"
    later = set(TRAINING[TRAINING.index(name):])
    assert not _top_level_imports(name) & later, f"{name} imports {sorted(_top_level_imports(name) & later)}"


def _function_level_imports(name):
    """The modules that ``name`` imports inside functions or classes (not at module level)."""
    tree = ast.parse(MODULES[name].read_text())
    top = set(map(id, tree.body))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
            found |= {node.module} if isinstance(node, ast.ImportFrom) else {a.name for a in node.names}
    return found


@pytest.mark.parametrize("name", TRAINING + ["gcg.train", "gcg.presets"])
def test_the_trainer_imports_inside_functions_only_optional_packages(name):
    assert _function_level_imports(name) <= DEFERRED, sorted(_function_level_imports(name) - DEFERRED)


def test_the_import_graph_is_read_correctly():
    assert "gcg.nn.config" in _top_level_imports("gcg.nn.unet")
    assert {"gcg.losses", "gcg.schedules"} <= _top_level_imports("gcg.diffusion")  # relative imports
    assert {"gcg.training.config", "gcg.diffusion"} <= _reachable("gcg.training.state")
    assert _function_level_imports("gcg.training.monitor") == DEFERRED
    assert "gcg.cli" in _top_level_imports("gcg.train")


# ---------------------------------------------------------------- what importing a book module loads
BOOK = MATHS + ["gcg.images", "gcg.nn", "gcg.metrics"]  # chapters 01-07: the maths, networks, metrics
IO_PACKAGES = IO + ["gcg.training", "gcg.export"]
# One fresh interpreter; before each import every gcg module is dropped from sys.modules, so each
# book module is imported alone with everything it pulls in at run time (lazy exports included).
_PROBE = """
import importlib, json, sys
loaded = {}
for name in sys.argv[1:]:
    for key in [k for k in sys.modules if k == "gcg" or k.startswith("gcg.")]:
        del sys.modules[key]
    importlib.import_module(name)
    loaded[name] = sorted(k for k in sys.modules if k == "gcg" or k.startswith("gcg."))
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def gcg_modules_loaded_by():
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _PROBE, *BOOK], capture_output=True, text=True, env=env,
                          cwd=PACKAGE.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", BOOK)
def test_importing_a_book_module_loads_no_io(name, gcg_modules_loaded_by):
    loaded = gcg_modules_loaded_by[name]
    assert name in loaded  # the probe imported it
    io = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in IO_PACKAGES)]
    assert not io, f"import {name} loads {io}: the book's modules must not depend on files, data sets or CLIs"


def _imports_anywhere(name):
    """The modules that module ``name`` imports anywhere in its file, inside functions too."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{prefix}.{base}" if base else prefix
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


# the command line of the toys (python -m gcg.toy) lives in gcg/toy.py and uses gcg.cli's error path
IO_INSIDE_FUNCTIONS_ALLOWED = {("gcg.toy", "gcg.cli")}


@pytest.mark.parametrize("name", sorted(m for m in MODULES if any(m == b or m.startswith(b + ".") for b in BOOK)))
def test_the_book_modules_import_no_io_even_inside_functions(name):
    io = {p for m in _imports_anywhere(name) for p in IO_PACKAGES if m == p or m.startswith(p + ".")}
    io = sorted(p for p in io if (name, p) not in IO_INSIDE_FUNCTIONS_ALLOWED)
    assert not io, f"{name} imports {io}; loading files belongs to gcg.checkpoint / gcg.data / the CLIs"
