"""The book builds offline with warnings as errors, with all, some or none of its chapters.

Each build runs on a copy of the files a fresh clone has (book/, notebooks/, gcg/), so nothing
in the working tree (a virtual environment, old build folders) can make it pass or fail.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__", ".*")

pytest.importorskip("jupyter_book", reason="the book needs the [book] extra: pip install -e '.[book]'")


def _copy_tree(dest: Path, chapters: bool) -> None:
    for name in ("book", "gcg"):
        shutil.copytree(REPO / name, dest / name, ignore=IGNORE)
    if chapters:
        shutil.copytree(REPO / "notebooks", dest / "notebooks", ignore=IGNORE)
    else:
        (dest / "notebooks").mkdir()
        shutil.copy(REPO / "notebooks" / "AUTHORING.md", dest / "notebooks")


def _build(root: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(root),
        "--config", str(root / "book" / "_config.yml"), "--toc", str(root / "book" / "_toc.yml"),
        "--path-output", str(out), "-W", "-n", "--keep-going",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)


def _check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def test_book_builds_with_every_chapter(tmp_path):
    root, out = tmp_path / "repo", tmp_path / "out"
    _copy_tree(root, chapters=True)
    _check(_build(root, out))
    html = out / "_build" / "html"
    chapters = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    intro = (html / "book" / "intro.html").read_text()
    for page in ("book/notation", "book/bibliography", "notebooks/AUTHORING"):
        assert (html / f"{page}.html").exists(), page
    for stem in chapters:  # every chapter reaches the book and its table of contents by the glob
        assert (html / "notebooks" / f"{stem}.html").exists(), stem
        assert f"notebooks/{stem}.html" in intro, f"{stem} is missing from the table of contents"


def test_book_builds_without_chapters(tmp_path):
    root, out = tmp_path / "repo", tmp_path / "out"
    _copy_tree(root, chapters=False)
    _check(_build(root, out))
    assert (out / "_build" / "html" / "book" / "intro.html").exists()
