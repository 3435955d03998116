"""The install story: pyproject.toml and environment.yml list the same packages."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def _pyproject_requirements():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        reqs += extra
    return {_normalise(r) for r in reqs}


def _environment_requirements():
    reqs, in_pip = set(), False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped == "- pip:":
            in_pip = True
            continue
        if in_pip and stripped.startswith("- ") and not stripped.startswith("- -e"):
            reqs.add(_normalise(stripped[2:]))
    return reqs


def test_environment_matches_pyproject():
    py, env = _pyproject_requirements(), _environment_requirements()
    assert py == env, f"only in pyproject: {sorted(py - env)}; only in environment.yml: {sorted(env - py)}"


def test_lazy_exports_resolve_to_their_modules():
    import gcg

    assert "GaussianDiffusion" in dir(gcg)
    try:
        gcg.no_such_name
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:  # pragma: no cover
        raise AssertionError("unknown names must raise AttributeError")


def test_every_export_resolves():
    import gcg

    missing = []
    for name in gcg._EXPORTS:
        try:
            getattr(gcg, name)
        except (AttributeError, ImportError) as err:
            missing.append(f"{name}: {err}")
    assert not missing, missing
