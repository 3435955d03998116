"""Export chapter notebooks to standalone HTML pages that read offline.

    python scripts/export_html.py notebooks/04_classifier_guidance.ipynb            # -> book/_build/notebooks_html/
    python scripts/export_html.py notebooks/*.ipynb --out-dir /tmp/chapters

`jupyter nbconvert --to html` loads MathJax 2 and require.js from a CDN, so without a network a
reader sees raw LaTeX. This script uses nbconvert's JupyterLab template with two changes: MathJax 3
comes from the local copy that the `sphinx-mathjax-offline` package ships (the one the book uses),
copied next to the pages as `mathjax/`, and require.js (needed only by widgets, which the chapters
do not use) is left out. The pages then load nothing from outside the output folder.

nbconvert renders Markdown cells as CommonMark, so the MyST the chapters use is rewritten first
(`myst_to_commonmark`): citations become "(Ho et al., 2020)" from book/references.bib, labelled
equations get numbers (counted from (1) in each notebook) and their references "(n)", admonitions
become quotes, and dropdown admonitions (hints, solutions) collapsible <details>. The HTML book and
JupyterLab with jupyterlab-myst render the MyST itself.
"""

import argparse
import importlib.util
import re
import shutil
import sys
from pathlib import Path

MATHJAX_ENTRY = "tex-chtml.js"
CHAPTER_LINK = re.compile(r'href="((?:\./)?\d\d_[\w-]+)\.ipynb(#[^"]*)?"')

# nbconvert's lab template with the two network loads replaced (see the module docstring), and the
# source of cells tagged hide-input (write-it-yourself solutions, long asserts) collapsed as in the book.
TEMPLATE = r"""
{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block input_group -%}
{%- if "hide-input" in cell.metadata.get("tags", []) -%}
<details class="gcg-hidden-input"><summary>Show code cell source</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock input_group %}
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


REPO = Path(__file__).resolve().parent.parent
DIRECTIVE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|:{3,})\{(?P<name>[\w-]+)\}[ \t]*(?P<arg>[^\n]*)\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.M | re.S,
)
LABELLED_EQUATION = re.compile(r"\$\$(?P<math>(?:(?!\$\$).)*)\$\$[ \t]*\((?P<label>[\w:-]+)\)", re.S)
ROLE = re.compile(r"\{(?P<role>[\w:]+)\}`(?P<text>[^`]*)`")
LABEL_LINE = re.compile(r"^[ \t]*\((?P<label>[\w:-]+)\)=[ \t]*$", re.M)
ADMONITIONS = {"admonition", "note", "tip", "hint", "important", "warning", "caution", "attention", "seealso"}


def bibliography_labels(bib: Path = REPO / "book" / "references.bib") -> dict[str, tuple[str, str]]:
    """key -> (authors as cited, year) for every entry of a BibTeX file: "Ho et al.", "2020"."""
    labels = {}
    for entry in re.split(r"\n(?=@)", bib.read_text(encoding="utf-8")):
        key = re.match(r"\s*@\w+\{([^,\s]+),", entry)
        author = re.search(r"\bauthor\s*=\s*\{(.*?)\},?\s*\n", entry, re.S)
        year = re.search(r"\byear\s*=\s*\{?(\d{4})", entry)
        if not (key and author and year):
            continue
        names = [n.strip() for n in re.split(r"\s+and\s+", " ".join(author[1].split()))]
        surnames = [(n.split(",")[0] if "," in n else n.split()[-1]).strip("{}") for n in names]
        cited = surnames[0] if len(names) == 1 else " and ".join(surnames) if len(names) == 2 else f"{surnames[0]} et al."
        labels[key[1]] = (cited, year[1])
    return labels


def myst_to_commonmark(markdown: str, numbers: dict[str, int], bib: dict[str, tuple[str, str]]) -> str:
    """The MyST of one Markdown cell rewritten as CommonMark that nbconvert renders.

    numbers maps equation labels to their numbers (filled in order of appearance, shared by the
    cells of one notebook); bib is bibliography_labels().
    """

    def directive(m: re.Match) -> str:
        indent, name, arg = m["indent"], m["name"], m["arg"].strip()
        if name not in ADMONITIONS:
            return m[0]
        lines = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in m["body"].splitlines()]
        options = {}
        while lines and re.match(r"^:[\w-]+:", lines[0]):
            key, _, value = lines.pop(0)[1:].partition(":")
            options[key] = value.strip()
        body = myst_to_commonmark("\n".join(lines).strip("\n"), numbers, bib)
        title = arg or name.capitalize()
        if "dropdown" in options.get("class", ""):
            block = f"<details>\n<summary>{title}</summary>\n\n{body}\n\n</details>"
        else:
            block = f"**{title}**\n\n{body}"
            block = "\n".join("> " + line if line else ">" for line in block.splitlines())
        return "\n".join(indent + line if line else line for line in block.splitlines())

    def equation(m: re.Match) -> str:
        number = numbers.setdefault(m["label"], len(numbers) + 1)
        return f"$${m['math'].rstrip()} \\tag{{{number}}}$$"

    def role(m: re.Match) -> str:
        kind, text = m["role"], m["text"]
        if kind.startswith("cite"):
            keys = [k.strip() for k in text.split(",")]
            found = [bib.get(k, (k, "")) for k in keys]
            if kind == "cite:t":
                return "; ".join(f"{a} ({y})" for a, y in found)
            return "(" + "; ".join(f"{a}, {y}" if y else a for a, y in found) + ")"
        if kind == "eq":
            number = numbers.setdefault(text, len(numbers) + 1)
            return f"[({number})](#{text})"
        if kind == "math":
            return f"${text}$"
        return re.sub(r"\s*<[^>]*>$", "", text)  # {ref}`text <target>`, {doc}`page`: the text

    text = markdown
    while True:  # nested directives: the outer one first, its body converted recursively
        new = DIRECTIVE.sub(directive, text)
        if new == text:
            break
        text = new
    text = LABEL_LINE.sub(lambda m: f'<a id="{m["label"]}"></a>', text)
    text = LABELLED_EQUATION.sub(
        lambda m: f'<a id="{m["label"]}"></a>\n\n' + equation(m), text
    )
    return ROLE.sub(role, text)


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
    pages, bib = [], bibliography_labels()
    for notebook in notebooks:
        if notebook.suffix != ".ipynb" or not notebook.exists():
            raise SystemExit(f"{notebook}: expected a stored notebook notebooks/NN_name.ipynb")
        nb, numbers = nbformat.read(notebook, as_version=4), {}
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = myst_to_commonmark(cell.source, numbers, bib)
        body, _ = exporter.from_notebook_node(nb)
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
