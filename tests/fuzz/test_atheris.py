"""The coverage-guided fuzzer (tests/fuzz/atheris_readers.py) runs every reader target and finds no violation.

The suite's short run: 200 inputs over all targets in one process. The long run is in docs/reliability.md.
"""

import os
import pathlib
import subprocess
import sys

from tests.conftest import import_or_skip

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_a_short_atheris_run_over_every_reader_finds_no_violation(tmp_path):
    import_or_skip("atheris", "atheris (a test dependency) is not installed: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "tests.fuzz.atheris_readers", "all", "-runs=200", "-seed=1"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 200 runs" in run.stderr
    assert not list(tmp_path.glob("crash-*"))
