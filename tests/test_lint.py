"""The package and tests stay ruff clean and formatted, and the package type-checks (it ships
``py.typed``): the habits of docs/design.md §1, the same checks as ``.pre-commit-config.yaml``."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_clean():
    out = _run("ruff", "check", "workbench", "tests")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_formatted():
    out = _run("ruff", "format", "--check", "workbench", "tests")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_mypy_clean():
    out = _run("mypy", "workbench")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
