#!/usr/bin/env python
"""Re-execute book chapters exactly the way CI checks them, and store the outputs.

The jupytext ``py:percent`` file is the source of truth. For each chapter this script

1. reads ``notebooks/NN_name.py`` (or, with ``--from-ipynb``, the ``.ipynb``);
2. executes it top to bottom in a fresh kernel of the *current* Python environment, with the
   notebook's folder as working directory (as ``pytest --nbval --nbval-current-env`` does), with
   ``GCG_SCALE`` and ``MPLBACKEND`` removed from the environment so the stored outputs are the small
   CPU default and figures are stored as PNG;
3. cleans the result: per-cell metadata reduced to ``tags``, notebook metadata to ``kernelspec``,
   ``language_info`` and ``jupytext``, deterministic cell ids, consecutive stream outputs coalesced
   and carriage-return updates (tqdm) collapsed;
4. writes BOTH files, ``NN_name.ipynb`` (with outputs, execution counts 1..n) and ``NN_name.py``
   (re-normalised by jupytext), so the pair is in sync.

Usage (from anywhere)::

    python scripts/execute_notebook.py notebooks/01_ddpm.py [notebooks/02_improved_ddpm.py ...]
    python scripts/execute_notebook.py --all          # every notebooks/NN_*.py, in order

It prints each chapter's wall time; a chapter over the 5-minute budget makes the exit status 2
(the files are still written so the author can inspect them). A cell that raises makes the exit
status 1 and leaves both files untouched.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
CHAPTER_RE = re.compile(r"^\d\d_[a-z0-9_]+$")
BUDGET_S = 300.0  # hard limit per chapter on 2 CPU cores (AUTHORING.md); aim for <= 180 s
KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info", "jupytext")
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def chapter_paths(path: str | Path) -> tuple[Path, Path]:
    """Return (py_path, ipynb_path) for a chapter given either file (or its stem)."""
    path = Path(path).resolve()
    stem = path.with_suffix("") if path.suffix in (".py", ".ipynb") else path
    if not CHAPTER_RE.match(stem.name):
        raise SystemExit(
            f"error: {path.name!r} is not a chapter name; chapters are notebooks/NN_name.py "
            "(two digits, underscore, lower-case name), see notebooks/AUTHORING.md"
        )
    return stem.with_suffix(".py"), stem.with_suffix(".ipynb")


def clean_notebook(nb, stem: str):
    """Reduce metadata to what the book and nbval need, give cells stable ids, coalesce streams."""
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    nb.metadata = {k: nb.metadata[k] for k in KEEP_NOTEBOOK_METADATA if k in nb.metadata}
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for i, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags")
        cell.metadata = {"tags": list(tags)} if tags else {}
        if tags and "hide-input" in tags:  # the book collapses it; so does JupyterLab
            cell.metadata["jupyter"] = {"source_hidden": True}
        cell.id = f"{stem[:40]}-{i:03d}".replace("_", "-")
    nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
    return nb


def read_source(py_path: Path, ipynb_path: Path, from_ipynb: bool):
    import jupytext

    if from_ipynb:
        if not ipynb_path.exists():
            raise SystemExit(f"error: --from-ipynb given but {ipynb_path} does not exist")
        return jupytext.read(ipynb_path)
    if not py_path.exists():
        if ipynb_path.exists():
            raise SystemExit(
                f"error: {py_path.name} is missing; the .py is the source of truth. Create it with\n"
                f"  python scripts/execute_notebook.py --from-ipynb {ipynb_path}"
            )
        raise SystemExit(f"error: no such chapter: {py_path}")
    return jupytext.read(py_path)


def check_cells(nb, name: str) -> None:
    """Empty code cells are never executed, which breaks the 1..n execution-count check."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and not cell.source.strip():
            raise SystemExit(f"error: {name}: code cell {i} is empty; delete it from the .py file")


def execute_chapter(path: str | Path, from_ipynb: bool = False, timeout: int = 3600) -> float:
    """Execute one chapter, write its .ipynb and .py; return the wall time in seconds."""
    import jupytext
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    py_path, ipynb_path = chapter_paths(path)
    nb = read_source(py_path, ipynb_path, from_ipynb)
    check_cells(nb, py_path.name)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata["kernelspec"] = dict(KERNELSPEC)

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",  # jupyter_client runs "python" as sys.executable: this environment
        record_timing=False,
        resources={"metadata": {"path": str(py_path.parent)}},
    )
    print(f"executing {py_path.relative_to(REPO) if py_path.is_relative_to(REPO) else py_path} ...", flush=True)
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        print(f"FAILED {py_path.name}: a cell raised; nothing was written.\n{err}", file=sys.stderr)
        raise SystemExit(1) from None
    except CellTimeoutError as err:
        print(f"FAILED {py_path.name}: a cell ran longer than --timeout {timeout} s; nothing was written. "
              f"On a busy machine raise --timeout.\n{err}", file=sys.stderr)
        raise SystemExit(1) from None
    except DeadKernelError:
        print(f"FAILED {py_path.name}: the kernel died (out of memory, or killed); nothing was written.",
              file=sys.stderr)
        raise SystemExit(1) from None
    elapsed = time.perf_counter() - start

    nb = clean_notebook(nb, py_path.stem)
    jupytext.write(nb, ipynb_path, fmt="ipynb")
    jupytext.write(nb, py_path, fmt="py:percent")
    return elapsed


def update_text_only(path: str | Path) -> None:
    """Copy Markdown cells and tags from the .py into the stored .ipynb without executing.

    For prose-only edits (errata, hints, a collapsed cell): every code cell of the .py must be
    unchanged, so the stored outputs still belong to it. Anything else needs a real execution.
    """
    import jupytext

    py_path, ipynb_path = chapter_paths(path)
    src, stored = jupytext.read(py_path), jupytext.read(ipynb_path)
    code_src = [c.source for c in src.cells if c.cell_type == "code"]
    code_stored = [c.source for c in stored.cells if c.cell_type == "code"]
    if code_src != code_stored:
        changed = next(i for i, (a, b) in enumerate(zip(code_src + [None], code_stored + [None])) if a != b)
        raise SystemExit(f"error: {py_path.name}: code cell {changed} differs from the stored notebook; "
                         "--text-only is for Markdown and tags only, execute the chapter instead")
    outputs = iter([(c.outputs, c.execution_count) for c in stored.cells if c.cell_type == "code"])
    for cell in src.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = next(outputs)
    src.metadata = stored.metadata
    nb = clean_notebook(src, py_path.stem)
    jupytext.write(nb, ipynb_path, fmt="ipynb")
    jupytext.write(nb, py_path, fmt="py:percent")
    print(f"{py_path.stem}: Markdown and tags updated, stored outputs kept")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="chapter files (.py or .ipynb) to execute")
    parser.add_argument("--all", action="store_true", help="execute every notebooks/NN_*.py")
    parser.add_argument(
        "--from-ipynb", action="store_true", help="take the cells from the .ipynb instead of the .py"
    )
    parser.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    parser.add_argument(
        "--text-only", action="store_true",
        help="do not execute: copy Markdown cells and tags from the .py into the stored .ipynb "
             "(every code cell must be unchanged)",
    )
    args = parser.parse_args(argv)

    paths = list(args.notebooks)
    if args.all:
        paths += sorted(str(p) for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    if not paths:
        parser.error("give chapter files or --all")

    for var in ("GCG_SCALE", "MPLBACKEND"):
        if os.environ.pop(var, None) is not None:
            print(f"note: ignoring {var} from the environment (stored outputs use the defaults)")
    # OpenMP's wait policy is left as in CI (.ci/run: unset). OMP_WAIT_POLICY=PASSIVE from the
    # environment still applies; it halves the speed of the chapters' 2-thread training.

    if args.text_only:
        for path in paths:
            update_text_only(path)
        return 0
    status = 0
    for path in paths:
        elapsed = execute_chapter(path, from_ipynb=args.from_ipynb, timeout=args.timeout)
        verdict = "ok" if elapsed <= BUDGET_S else f"OVER the {BUDGET_S:.0f} s budget"
        print(f"{Path(path).stem}: {elapsed:.1f} s ({verdict})", flush=True)
        if elapsed > BUDGET_S:
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
