"""Export chapter notebooks to standalone HTML pages that read offline.

    python scripts/export_html.py notebooks/04_classifier_guidance.ipynb            # -> book/_build/notebooks_html/
    python scripts/export_html.py notebooks/*.ipynb --out-dir /tmp/chapters

`jupyter nbconvert --to html` loads MathJax 2 and require.js from a CDN, so without a network a
reader sees raw LaTeX. This script uses nbconvert's JupyterLab template with two changes: MathJax 3
comes from the local copy that the `sphinx-mathjax-offline` package ships (the one the book uses),
copied next to the pages as `mathjax/`, and require.js (needed only by widgets, which the chapters
do not use) is left out. The pages then load nothing from outside the output folder.

MyST syntax in Markdown cells ({cite:p} roles, admonitions) is shown as written: nbconvert renders
CommonMark. The HTML book and JupyterLab with jupyterlab-myst render it.
"""

import argparse
import importlib.util
import re
import shutil
import sys
from pathlib import Path

MATHJAX_ENTRY = "tex-chtml.js"
CHAPTER_LINK = re.compile(r'href="((?:\./)?\d\d_[\w-]+)\.ipynb(#[^"]*)?"')

# nbconvert's lab template, with the two network loads replaced (see the module docstring).
TEMPLATE = r"""
{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}
<script>
window.MathJax = {
  tex: {
    inlineMath: [['$', '$'], ['\\(', '\\)']],
    displayMath: [['$$', '$$'], ['\\[', '\\]']],
    processEscapes: true,
    processEnvironments: true,
    tags: 'ams'
  }
};
</script>
<script defer src="{{ resources.mathjax_url }}"></script>
{%- endblock html_head_js_mathjax -%}
"""


def local_mathjax_dir() -> Path:
    """The MathJax 3 distribution installed by the `sphinx-mathjax-offline` package (the [book] extra)."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "no local MathJax: install the book's extra with  pip install -e '.[book]'  "
            "(it brings sphinx-mathjax-offline, which ships MathJax 3)"
        )
    path = Path(spec.origin).parent / "static" / "mathjax"
    if not (path / MATHJAX_ENTRY).exists():
        raise SystemExit(f"{path / MATHJAX_ENTRY} is missing: reinstall sphinx-mathjax-offline")
    return path


def export(notebooks: list[Path], out_dir: Path) -> list[Path]:
    """Write out_dir/<stem>.html for each notebook, and out_dir/mathjax/ once; return the pages."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(local_mathjax_dir(), out_dir / "mathjax", dirs_exist_ok=True)
    exporter = HTMLExporter(
        template_name="lab",
        template_file="gcg_offline.html.j2",
        extra_loaders=[jinja2.DictLoader({"gcg_offline.html.j2": TEMPLATE})],
        mathjax_url=f"mathjax/{MATHJAX_ENTRY}",
    )
    pages = []
    for notebook in notebooks:
        if notebook.suffix != ".ipynb" or not notebook.exists():
            raise SystemExit(f"{notebook}: expected a stored notebook notebooks/NN_name.ipynb")
        body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
        # a link to another chapter's notebook points at its exported page
        body = CHAPTER_LINK.sub(lambda m: f'href="{m[1]}.html{m[2] or ""}"', body)
        page = out_dir / f"{notebook.stem}.html"
        page.write_text(body, encoding="utf-8")
        pages.append(page)
    return pages


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="stored notebooks (.ipynb)")
    parser.add_argument("--out-dir", type=Path, default=Path("book/_build/notebooks_html"))
    args = parser.parse_args(argv)
    for page in export(args.notebooks, args.out_dir):
        print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
