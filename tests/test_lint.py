"""The tree stays ruff-clean (lint rules and formatting from pyproject.toml); in CI a missing ruff fails."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, skip_or_fail


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_reports_nothing(command):
    ruff = shutil.which("ruff")
    if ruff is None:
        skip_or_fail("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run([ruff, *command, "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_ruff_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(outcome, match="ruff is not installed"):
        test_ruff_reports_nothing(["check"])


NEEDS_SHARED = """
from tests.conftest import tiny_rwkv_dir  # noqa: F401  (the fixture under test)


def test_needs_the_shared_fixtures(tiny_rwkv_dir):
    assert tiny_rwkv_dir.is_dir()
"""


# In CI the fixture's setup fails, which pytest reports as an error (exit status 1, like a failed test).
@pytest.mark.parametrize(("ci", "expected"), [("true", "1 error"), ("false", "1 skipped")])
def test_missing_shared_fixtures_fail_in_ci_and_skip_elsewhere(tmp_path, ci, expected):
    """A pytest run in a subprocess, with RWKV_JAX_SHARED pointing at an empty folder."""
    (tmp_path / "empty_shared").mkdir()
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "test_needs_shared.py").write_text(NEEDS_SHARED)
    env = {**os.environ, "CI": ci, "RWKV_JAX_SHARED": str(tmp_path / "empty_shared")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    command = [sys.executable, "-m", "pytest", "-q", "-rsE", "-p", "no:cacheprovider", "test_needs_shared.py"]
    result = subprocess.run(
        command, cwd=tmp_path / "suite", env=env, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert expected in output, output
    assert "needs the shared fixtures at" in output, output
    assert result.returncode == (1 if ci == "true" else 0), output
