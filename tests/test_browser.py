"""The book as a reader gets it: every page opened in headless Chromium with no network.

The built HTML is served from 127.0.0.1; any request that leaves the machine is refused and counts
as a failure. On every page of the book (and on one chapter exported with scripts/export_html.py)
the rendered DOM must show typeset maths (MathJax output, no raw ``\\(``, ``\\[`` or ``$$`` left
in the text), no raw pipe tables, no raw MyST roles or directives, every image loaded, every link
into the book resolving to an existing page and anchor, and no console errors. A full-page
screenshot of each page is saved under book/_build/screenshots/ for a person to look at.

Needs Debian's ``chromium`` (``apt-get install chromium``; .ci/run installs it) and the
``playwright`` package, which drives that executable (no browser is downloaded).
"""

import contextlib
import functools
import html
import http.server
import importlib.util
import re
import shutil
import threading
import urllib.parse
from pathlib import Path

import pytest
from book_build import REPO, full_build

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("needs Debian's chromium (apt-get install chromium); .ci/run installs it", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[book]'")
pytest.importorskip("jupyter_book", reason="the book needs the [book] extra: pip install -e '.[book]'")

SCREENSHOTS = REPO / "book" / "_build" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 900}

# Run in the page after MathJax has finished: everything a reader would see that was not rendered.
# Text inside code, preformatted outputs and typeset maths is the author's and is left alone.
INSPECT_JS = r"""
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const images = [...document.images];
  images.forEach(img => { img.loading = 'eager'; });
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  const skip = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'TEXTAREA', 'MJX-CONTAINER', 'MJX-ASSISTIVE-MML', 'KBD', 'SAMP']);
  const texts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    let inside = false;
    for (let el = node.parentElement; el; el = el.parentElement) if (skip.has(el.tagName)) { inside = true; break; }
    if (!inside && node.textContent.trim()) texts.push(node.textContent);
  }
  return {
    texts,
    mathjax: document.querySelectorAll('mjx-container').length,
    untypeset: [...document.querySelectorAll('.math')].filter(m => !m.querySelector('mjx-container'))
      .map(m => m.textContent.slice(0, 80)),
    mathjaxErrors: [...document.querySelectorAll('mjx-merror')].map(m => m.textContent.slice(0, 80)),
    brokenImages: images.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.src),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  };
}
"""

_LAST = {}  # the last page's count of typeset formulas
RAW_TEXT = {  # what a reader must never see in the text of a page
    "raw maths": re.compile(r"\\\(|\\\[|\$\$|\\[A-Za-z]{2,}"),  # delimiters, or a command such as \sqrt
    "raw pipe table": re.compile(r"\|\s*:?-{3,}:?\s*\|"),
}
RAW_MYST = {  # MyST that the book renders and scripts/export_html.py rewrites
    "raw MyST role": re.compile(r"\{(cite|cite:p|cite:t|eq|ref|numref|doc|math|term)\}`"),
    "raw MyST directive": re.compile(r"^(:::|```)\{", re.M),
    "raw MyST label": re.compile(r"^\([\w-]+\)=\s*$", re.M),
}


@contextlib.contextmanager
def _serve(directory: Path):
    """An HTTP server for directory on 127.0.0.1; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _browser(profile: Path):
    """Headless Chromium with a fresh profile, in which only 127.0.0.1 can be reached."""
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT,
            # belt and braces: a request that slipped past the route below would go to a dead proxy
            proxy={"server": "http://127.0.0.1:9", "bypass": "127.0.0.1"},
        )  # fmt: skip
        context.outside_requests = []

        def route(route):
            url = route.request.url
            if urllib.parse.urlsplit(url).hostname == "127.0.0.1" or url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                context.outside_requests.append(url)
                route.abort()

        context.route("**/*", route)
        try:
            yield context
        finally:
            context.close()


def _ids(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return {html.unescape(name) for name in re.findall(r'\b(?:id|name)="([^"]+)"', text)}


def _check_page(context, base: str, root: Path, page: str, shot: Path, myst: bool) -> list[str]:
    """Open base+page in a new tab; return what is wrong with it (empty when nothing is)."""
    problems, console = [], []
    context.outside_requests.clear()
    tab = context.new_page()
    tab.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda err: console.append(f"uncaught: {err}"))
    tab.on("response", lambda r: console.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    try:
        tab.goto(base + page, wait_until="load")
        found = tab.evaluate(INSPECT_JS)
        _LAST["mathjax"] = found["mathjax"]
        shot.parent.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(shot), full_page=True)
    finally:
        tab.close()
    problems += [f"request outside 127.0.0.1: {url}" for url in context.outside_requests]
    problems += [f"console error: {text}" for text in console]
    problems += [f"maths not typeset: {text!r}" for text in found["untypeset"]]
    problems += [f"MathJax error: {text!r}" for text in found["mathjaxErrors"]]
    problems += [f"image not loaded: {src}" for src in found["brokenImages"]]
    patterns = RAW_TEXT | (RAW_MYST if myst else {})
    for text in found["texts"]:
        for what, pattern in patterns.items():
            if pattern.search(text):
                problems.append(f"{what}: {text.strip()[:120]!r}")
    for href in sorted(set(found["links"])):
        url = urllib.parse.urlsplit(href)
        if not href.startswith(base):
            continue
        target = root / urllib.parse.unquote(url.path.lstrip("/"))
        if url.path.endswith("/"):
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"broken link: {href}")
        elif url.fragment and target.suffix == ".html" and not {url.fragment, urllib.parse.unquote(url.fragment)} & _ids(target):
            problems.append(f"broken anchor: {href}")
    return problems


def _book_pages(site: Path) -> list[str]:
    pages = sorted(str(p.relative_to(site)) for p in (site / "book").glob("*.html"))
    pages += sorted(str(p.relative_to(site)) for p in (site / "notebooks").glob("*.html"))
    expected = {"book/intro.html", "book/notation.html", "book/bibliography.html", "notebooks/AUTHORING.html"}
    expected |= {f"notebooks/{p.stem}.html" for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert expected <= set(pages), f"pages missing from the build: {sorted(expected - set(pages))}"
    return pages


@pytest.fixture(scope="module")
def screenshots():
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    return SCREENSHOTS


def test_every_book_page_renders_offline(tmp_path_factory, tmp_path, screenshots):
    site = full_build(tmp_path_factory)
    problems = {}
    with _serve(site) as base, _browser(tmp_path / "profile") as context:
        for page in _book_pages(site):
            shot = screenshots / "book" / page.replace("/", "__").replace(".html", ".png")
            found = _check_page(context, base, site, page, shot, myst=True)
            if found:
                problems[page] = found
    assert not problems, "\n".join(f"{page}:\n  " + "\n  ".join(p) for page, p in problems.items())


def test_exported_notebook_renders_offline(tmp_path, screenshots):
    spec = importlib.util.spec_from_file_location("export_html", REPO / "scripts" / "export_html.py")
    export_html = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_html)
    chapters = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not chapters:
        pytest.skip("no chapter notebooks yet")
    chapter = next((p for p in chapters if p.stem.startswith("04_")), chapters[0])
    pages = export_html.export(chapters, tmp_path / "site")  # all of them: links between chapters resolve
    page = pages[chapters.index(chapter)]
    with _serve(page.parent) as base, _browser(tmp_path / "profile") as context:
        shot = screenshots / "nbconvert" / f"{chapter.stem}.png"
        problems = _check_page(context, base, page.parent, page.name, shot, myst=True)
    if "$" in chapter.read_text() and not problems:  # the page has maths: MathJax must have typeset it
        problems = [] if _LAST["mathjax"] else ["no maths typeset (no mjx-container)"]
    assert not problems, f"{page.name} (nbconvert):\n  " + "\n  ".join(problems)
