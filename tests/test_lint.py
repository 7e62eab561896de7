"""The type checker and the linter: configured in pyproject.toml, clean over the code, and run by .ci/run between the
venv's install and the tests (issue 18: "Types and lint in CI")."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _tool(module: str) -> list[str]:
    """``python -m <module>`` of this venv; the test skips, saying why, where the test extra is not installed."""
    pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[test]' installs it)")
    return [sys.executable, "-m", module]


@pytest.mark.fast
def test_ruff_finds_nothing_in_the_package_and_the_tests() -> None:
    done = subprocess.run([*_tool("ruff"), "check", "--no-cache", "gateway", "tests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing_in_the_package() -> None:  # about 20 s from a cold cache: not in the fast set
    done = subprocess.run([*_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


@pytest.mark.fast
def test_the_configuration_checks_what_issue_18_asks() -> None:
    mypy = PYPROJECT["tool"]["mypy"]
    assert mypy["python_version"] == "3.11" and mypy["files"] == ["gateway"]
    for option in ("check_untyped_defs", "disallow_untyped_defs", "no_implicit_optional", "warn_unused_ignores"):
        assert mypy[option] is True, option
    assert "ignore-without-code" in mypy["enable_error_code"]  # an ignore names what it hides
    untyped = [o for o in mypy.get("overrides", []) if o.get("ignore_missing_imports")]
    assert untyped and all("gateway" not in str(o["module"]) for o in untyped)  # third-party packages only

    ruff = PYPROJECT["tool"]["ruff"]
    assert ruff["line-length"] == 120 and ruff["target-version"] == "py311"
    select = ruff["lint"]["select"]
    for family in ("F", "B", "ASYNC"):  # pyflakes, bugbear, the async rules: whole families
        assert family in select, family
    assert "format" not in ruff  # lint only: the formatter is not run over the code
    test_extra = PYPROJECT["project"]["optional-dependencies"]["test"]
    assert any(d.startswith("mypy>=") for d in test_extra) and any(d.startswith("ruff>=") for d in test_extra)


@pytest.mark.fast
def test_ci_runs_both_after_the_install_and_before_the_tests() -> None:
    commands = [shlex.split(line) for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")]

    def found(predicate: Callable[[list[str]], bool]) -> list[int]:
        lines = [i for i, words in enumerate(commands) if predicate(words)]
        assert lines, "not in .ci/run"
        return lines

    def last(predicate: Callable[[list[str]], bool]) -> int:
        return found(predicate)[-1]

    install = found(lambda words: ".[test]" in words and any(w.endswith("/pip") for w in words))[0]
    ruff = last(lambda words: words[:2] == [".venv/bin/ruff", "check"] and {"gateway", "tests"} <= set(words))
    mypy = last(lambda words: words[:1] == [".venv/bin/mypy"])
    tests = last(lambda words: "pytest" in words and ".venv/bin/python" in words)
    assert install < ruff < tests and install < mypy < tests
    assert "set -euo pipefail" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")  # a finding stops the run
