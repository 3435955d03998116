"""Mutation testing for gcg's maths modules: do the unit tests notice wrong maths?

Each mutant changes one thing in one module: an arithmetic operator (+ -, * /, ** *), a
comparison (< <=, > >=, == !=), a numeric constant (c -> c + 1, or c * 2 for floats), a dropped
term (a + b -> a, a * b -> a), a removed minus sign, `and` <-> `or`. The mutated copy of the
package lives in a temporary directory (the working tree is never touched); the module's test
files run against it and the mutant is *killed* when a test fails (or hangs). Docstrings, error
messages, `raise` and `assert` statements are not mutated.

    python scripts/mutate.py gcg/losses.py tests/test_losses.py tests/test_diffusion.py
    python scripts/mutate.py gcg/diffusion.py tests/test_diffusion.py --sample 40 --seed 0
    python scripts/mutate.py gcg/diffusion.py tests/test_diffusion.py --lines 533   # mutants on line 533 only
    python scripts/mutate.py gcg/metrics.py tests/test_metrics.py --list            # list mutants, run nothing

Prints one line per mutant and the kill rate; --json FILE writes the results. Test files run in
one forked process per mutant with torch already imported, so a mutant costs only its tests.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SWAP = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
    ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv,
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.And: ast.Or, ast.Or: ast.And,
}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.FloorDiv: "//",
           ast.Mod: "%", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
           ast.NotEq: "!=", ast.And: "and", ast.Or: "or"}


@dataclass
class Mutant:
    index: int  # position in the module's list of mutants (stable while the code is unchanged)
    line: int
    col: int
    kind: str  # "op", "const", "drop", "neg"
    description: str
    killed: bool | None = None
    seconds: float = 0.0


def _skipped_nodes(tree):
    """Node ids never mutated: docstrings, raise/assert statements, f-strings, annotations."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.Assert, ast.JoinedStr)):
            skip |= {id(n) for n in ast.walk(node)}
        if isinstance(node, (ast.arg, ast.AnnAssign)) and getattr(node, "annotation", None) is not None:
            skip |= {id(n) for n in ast.walk(node.annotation)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            skip |= {id(n) for n in ast.walk(node.returns)}
    return skip


def _sites(tree):
    """Every (node, kind, payload, description) the module offers, in source order."""
    skip = _skipped_nodes(tree)
    sites = []
    for node in ast.walk(tree):
        if id(node) in skip or not hasattr(node, "lineno"):
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _SWAP:
            new = _SWAP[type(node.op)]
            sites.append((node, "op", new, f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}"))
            if isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
                sites.append((node, "drop", None, f"a {_SYMBOL[type(node.op)]} b -> a"))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _SWAP:
            new = _SWAP[type(node.ops[0])]
            sites.append((node, "op", new, f"{_SYMBOL[type(node.ops[0])]} -> {_SYMBOL[new]}"))
        elif isinstance(node, ast.BoolOp):
            new = _SWAP[type(node.op)]
            sites.append((node, "op", new, f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            sites.append((node, "neg", None, "-a -> a"))
        elif (isinstance(node, ast.Constant) and type(node.value) in (int, float)
              and not isinstance(node.value, bool)):
            new = node.value + 1 if isinstance(node.value, int) else (node.value * 2 if node.value else 1.0)
            sites.append((node, "const", new, f"{node.value!r} -> {new!r}"))
    sites.sort(key=lambda s: (s[0].lineno, s[0].col_offset, s[1]))
    return sites


def list_mutants(source: str) -> list[Mutant]:
    return [Mutant(i, n.lineno, n.col_offset, kind, desc)
            for i, (n, kind, _, desc) in enumerate(_sites(ast.parse(source)))]


def mutated_source(source: str, index: int) -> str:
    """The module's source with mutant ``index`` applied (reformatted by ast.unparse)."""
    tree = ast.parse(source)
    node, kind, payload, _ = _sites(tree)[index]

    class Apply(ast.NodeTransformer):
        def visit(self, n):
            if n is not node:
                return self.generic_visit(n)
            if kind == "op":
                if isinstance(n, ast.Compare):
                    n.ops = [payload()]
                else:
                    n.op = payload()
                return n
            if kind == "const":
                return ast.copy_location(ast.Constant(payload), n)
            if kind == "drop":
                return n.left
            if kind == "neg":
                return n.operand
            raise AssertionError(kind)

    return ast.unparse(ast.fix_missing_locations(Apply().visit(tree)))


def _run_tests_forked(workdir: Path, tests: list[str], timeout: float) -> tuple[bool, float]:
    """Run pytest on ``tests`` inside ``workdir`` in a forked child; True when every test passed."""
    start = time.time()
    pid = os.fork()
    if pid == 0:  # child: import the (mutated) package fresh from workdir
        os.chdir(workdir)
        sys.path.insert(0, str(workdir))
        for name in [m for m in sys.modules if m == "gcg" or m.startswith("gcg.")]:
            del sys.modules[name]
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        import pytest

        code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests])
        os._exit(int(code))
    deadline = start + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0, time.time() - start
        if time.time() > deadline:  # a hanging mutant counts as killed
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False, time.time() - start
        time.sleep(0.02)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="module to mutate, e.g. gcg/losses.py")
    parser.add_argument("tests", nargs="+", help="test files that guard it")
    parser.add_argument("--sample", type=int, default=None, help="run a random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--lines", default=None, help="only mutants on these lines: 12,40-55")
    parser.add_argument("--only", default=None, help="only these mutant indices: 3,17")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a mutant counts as killed")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)

    module = Path(args.module)
    source = (ROOT / module).read_text()
    mutants = list_mutants(source)
    if args.lines:
        keep = set()
        for part in args.lines.split(","):
            lo, _, hi = part.partition("-")
            keep |= set(range(int(lo), int(hi or lo) + 1))
        mutants = [m for m in mutants if m.line in keep]
    if args.only:
        wanted = {int(i) for i in args.only.split(",")}
        mutants = [m for m in mutants if m.index in wanted]
    if args.sample is not None and args.sample < len(mutants):
        mutants = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: m.index)
    if args.list:
        for m in mutants:
            print(f"#{m.index:4d} {module}:{m.line}:{m.col} {m.kind:5s} {m.description}")
        print(f"{len(mutants)} mutants")
        return 0

    import torch  # noqa: F401  (imported once here; every forked child inherits it)

    with tempfile.TemporaryDirectory(prefix="gcg-mutants-") as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "gcg", work / "gcg", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
        target = work / module
        ok, seconds = _run_tests_forked(work, args.tests, args.timeout)
        if not ok:
            print(f"the tests fail on the unmutated code; fix them first ({' '.join(args.tests)})")
            return 2
        print(f"unmutated: tests pass in {seconds:.1f} s; running {len(mutants)} mutants of {module}")
        for m in mutants:
            target.write_text(mutated_source(source, m.index))
            ok, m.seconds = _run_tests_forked(work, args.tests, args.timeout)
            m.killed = not ok
            status = "killed  " if m.killed else "SURVIVED"
            print(f"{status} #{m.index:4d} {module}:{m.line} {m.kind:5s} {m.description}  ({m.seconds:.1f} s)",
                  flush=True)
        target.write_text(source)

    killed = sum(m.killed for m in mutants)
    print(f"{module}: killed {killed}/{len(mutants)} = {killed / max(len(mutants), 1):.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(m) for m in mutants], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
