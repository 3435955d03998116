"""The book builds offline with warnings as errors, with all, some or none of its chapters.

Each build runs on a copy of the files a fresh clone has (see tests/book_build.py).
"""

import re

import pytest
from book_build import REPO, build, check, copy_tree, full_build

pytest.importorskip("jupyter_book", reason="the book needs the [book] extra: pip install -e '.[book]'")


def test_book_builds_with_every_chapter(tmp_path_factory):
    html = full_build(tmp_path_factory)
    chapters = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    intro = (html / "book" / "intro.html").read_text()
    for page in ("book/notation", "book/bibliography", "notebooks/AUTHORING"):
        assert (html / f"{page}.html").exists(), page
    for stem in chapters:  # every chapter reaches the book and its table of contents by the glob
        assert (html / "notebooks" / f"{stem}.html").exists(), stem
        assert f"notebooks/{stem}.html" in intro, f"{stem} is missing from the table of contents"


def test_book_loads_nothing_from_the_network(tmp_path_factory):
    """Scripts and styles come from the build itself; MathJax is the local copy (no CDN)."""
    html = full_build(tmp_path_factory)
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    for page in [*html.glob("book/*.html"), *html.glob("notebooks/*.html")]:
        text = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        assert not remote, f"{page.name} loads {remote}"
        assert "_static/mathjax/tex-chtml.js" in text or "class=\"math" not in text, page.name


def test_book_builds_without_chapters(tmp_path):
    root, out = tmp_path / "repo", tmp_path / "out"
    copy_tree(root, chapters=False)
    check(build(root, out))
    assert (out / "_build" / "html" / "book" / "intro.html").exists()
