"""Build the book the way a fresh clone builds it (shared by tests/test_book.py and tests/test_browser.py).

Each build runs on a copy of the files a fresh clone has (book/, notebooks/, gcg/), so nothing
in the working tree (a virtual environment, old build folders) can make it pass or fail.
"""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__", ".*")
_FULL_BUILD = {}


def copy_tree(dest: Path, chapters: bool) -> None:
    for name in ("book", "gcg"):
        shutil.copytree(REPO / name, dest / name, ignore=IGNORE)
    if chapters:
        shutil.copytree(REPO / "notebooks", dest / "notebooks", ignore=IGNORE)
    else:
        (dest / "notebooks").mkdir()
        shutil.copy(REPO / "notebooks" / "AUTHORING.md", dest / "notebooks")


def build(root: Path, out: Path) -> subprocess.CompletedProcess:
    """Strict build (warnings are errors, missing references too) of the copy at root into out/_build/html."""
    cmd = [
        sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(root),
        "--config", str(root / "book" / "_config.yml"), "--toc", str(root / "book" / "_toc.yml"),
        "--path-output", str(out), "-W", "-n", "--keep-going",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def full_build(tmp_path_factory) -> Path:
    """The book with every chapter, built once per test session; returns its HTML folder."""
    if "html" not in _FULL_BUILD:
        base = tmp_path_factory.mktemp("book")
        root, out = base / "repo", base / "out"
        copy_tree(root, chapters=True)
        _FULL_BUILD["result"] = build(root, out)
        _FULL_BUILD["html"] = out / "_build" / "html"
    check(_FULL_BUILD["result"])
    return _FULL_BUILD["html"]
