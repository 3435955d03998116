"""The book's chapters obey notebooks/AUTHORING.md: paired, executed, deterministic by construction.

nbval (``pytest notebooks``) re-runs each chapter and compares outputs, but it silently passes a
notebook whose cells were never executed and cannot see a ``.py`` that drifted from its
``.ipynb``; these tests close those gaps.
"""

import re
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHAPTER_RE = re.compile(r"^\d\d_[a-z0-9_]+$")
CHAPTERS = sorted({p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*") if p.suffix in (".py", ".ipynb")})


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _without_fences(markdown):
    """Markdown with fenced code blocks removed (a '# comment' inside one is not a heading)."""
    return re.sub(r"(?ms)^(```|~~~).*?^\1[^\n]*$", "", markdown)


def _tags(cell):
    return list(cell.get("metadata", {}).get("tags", []))


@pytest.fixture(params=CHAPTERS)
def chapter(request):
    """(stem, notebook read from .ipynb, notebook read from .py)."""
    stem = request.param
    ipynb, py = NOTEBOOKS / f"{stem}.ipynb", NOTEBOOKS / f"{stem}.py"
    assert ipynb.exists() and py.exists(), f"{stem}: needs both .py and .ipynb (run scripts/execute_notebook.py)"
    return stem, nbformat.read(ipynb, as_version=4), jupytext.read(py)


def test_notebook_files_are_named_and_paired():
    for path in NOTEBOOKS.iterdir():
        if path.suffix not in (".py", ".ipynb") or path.name.startswith("."):
            continue
        assert CHAPTER_RE.match(path.stem), (
            f"{path.name}: chapter files are named NN_name.py/.ipynb (see notebooks/AUTHORING.md)"
        )
        partner = path.with_suffix(".ipynb" if path.suffix == ".py" else ".py")
        assert partner.exists(), f"{path.name} has no paired {partner.name}; run scripts/execute_notebook.py"


def test_pair_is_in_sync(chapter):
    stem, nb, nb_py = chapter
    cells = [(c.cell_type, c.source, _tags(c)) for c in nb.cells]
    cells_py = [(c.cell_type, c.source, _tags(c)) for c in nb_py.cells]
    assert len(cells) == len(cells_py), f"{stem}: .ipynb has {len(cells)} cells, .py has {len(cells_py)}"
    for i, (a, b) in enumerate(zip(cells, cells_py)):
        assert a == b, (
            f"{stem}: cell {i} differs between .ipynb and .py; re-execute with "
            f"`python scripts/execute_notebook.py notebooks/{stem}.py`\n.ipynb: {a!r}\n.py:    {b!r}"
        )


def test_outputs_are_stored_with_counts_1_to_n(chapter):
    stem, nb, _ = chapter
    code = _code_cells(nb)
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{stem}: execution counts {counts} are not 1..{len(code)}; nbval skips un-executed cells. "
        f"Re-execute with `python scripts/execute_notebook.py notebooks/{stem}.py`"
    )
    assert any(c.outputs for c in code), f"{stem}: no stored outputs"


def test_outputs_are_comparable(chapter):
    stem, nb, _ = chapter
    for i, cell in enumerate(_code_cells(nb)):
        for out in cell.outputs:
            assert out.output_type != "error", f"{stem}: code cell {i} stored an error"
            data = out.get("data", {})
            assert "image/svg+xml" not in data, f"{stem}: code cell {i} stores an SVG; use PNG figures"
            assert "application/vnd.jupyter.widget-view+json" not in data, (
                f"{stem}: code cell {i} stores a widget (tqdm.auto?); pass progress=False"
            )


def test_first_code_cell_fixes_threads_seed_and_scale(chapter):
    stem, nb, _ = chapter
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), (
        f"{stem}: the first cell must be Markdown starting with the chapter's '# ' title"
    )
    h1 = [c for c in nb.cells if c.cell_type == "markdown" and re.search(r"(?m)^# ", _without_fences(c.source))]
    assert len(h1) == 1, f"{stem}: exactly one '# ' heading (the title) per chapter, found {len(h1)}"
    first = _code_cells(nb)[0].source
    for needle in ("GCG_SCALE", "torch.set_num_threads(2)", "torch.manual_seed("):
        assert needle in first, f"{stem}: the first code cell must contain {needle!r}"


def test_cells_follow_authoring_rules(chapter):
    stem, nb, _ = chapter
    for i, cell in enumerate(_code_cells(nb)):
        assert cell.source.strip(), f"{stem}: code cell {i} is empty"
        last = cell.source.rstrip().splitlines()[-1].split("#")[0].rstrip()
        assert not last.endswith(";"), (
            f"{stem}: code cell {i} ends with ';' which nbval does not honour; assign to _ instead"
        )
    assert any(re.search(r"^\s*assert ", c.source, re.M) for c in _code_cells(nb)), (
        f"{stem}: no cell asserts a claim"
    )
    assert any(
        c.cell_type == "markdown" and re.search(r"(?m)^##+ Exercises", c.source) for c in nb.cells
    ), f"{stem}: needs an '## Exercises' section"


def test_sanitize_config_normalises_what_varies():
    """The patterns nbval reads from notebooks/sanitize.cfg make varying outputs compare equal."""
    from nbval.plugin import get_sanitize_patterns

    text = (NOTEBOOKS / "sanitize.cfg").read_text()
    patterns = get_sanitize_patterns(text)
    assert len(patterns) == text.count("\nregex: "), "a regex/replace pair in sanitize.cfg is malformed"

    def sanitize(s):
        for regex, replace in patterns:
            s = re.sub(regex, replace, s)
        return s

    same = [
        ("100%|##########| 50/50 [00:03<00:00, 14.21it/s]   \n", "100%|##########| 50/50 [00:11<00:00,  4.40it/s]\n"),
        ("10/10 [01:02<00:00,  6.20s/it]", "10/10 [00:58<00:00,  5.81s/it]"),
        ("0/3 [00:00<?, ?it/s]", "0/3 [00:01<?, ?it/s]"),
        ("<Foo object at 0x7f3a2b1c>", "<Foo object at 0x55d0e1>"),
        ("/tmp/ipykernel_1234/567.py:3: UserWarning", "/tmp/ipykernel_99/1.py:3: UserWarning"),
    ]
    for a, b in same:
        assert sanitize(a) == sanitize(b), (a, b)
    # ...while real differences survive.
    assert sanitize("50/50 [00:03<00:00, 14.21it/s]") != sanitize("49/50 [00:03<00:00, 14.21it/s]")
    assert sanitize("loss 0.1234") != sanitize("loss 0.1235")
