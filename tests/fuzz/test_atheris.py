"""The coverage-guided fuzzer (tests/fuzz/atheris_readers.py) runs every reader target and finds no violation.

The suite's short run: 200 inputs over all targets in one process. The long run is in docs/reliability.md.
"""

import json
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


def test_the_rss_limit_sits_above_a_peak_inherited_over_exec():
    """A parent's 1 GiB peak carries over ``exec`` into libFuzzer's reading: the limit is 2048 MB above it."""
    import_or_skip("atheris", "atheris (a test dependency) is not installed: pip install -e '.[test]'")
    child = (
        "import json, resource; from tests.fuzz.atheris_readers import rss_limit_mb; "
        "print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "
        "rss_limit_mb(['x', 'all']), rss_limit_mb(['x', 'all', '-rss_limit_mb=5'])]))"
    )
    parent = (
        "import os, sys, numpy as np; block = np.ones(2**27); del block; "  # 1 GiB touched, then freed
        f"os.execv(sys.executable, [sys.executable, '-c', {child!r}])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", parent], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    peak_mb, limit, given = json.loads(run.stdout)
    assert peak_mb >= 1024
    assert limit == [f"-rss_limit_mb={peak_mb + 2048}"]
    assert given == []
