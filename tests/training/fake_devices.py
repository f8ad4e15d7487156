"""Runs a Python snippet in a fresh process with N fake CPU devices (the device count is fixed at JAX's
import, so a test that needs a mesh other than this process's runs its body in a subprocess)."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_with_devices(script: str, devices: int, cwd: pathlib.Path, timeout: float = 120) -> str:
    """Runs ``script`` with ``devices`` fake CPU devices and the repository on the path; returns its stdout.

    Fails the calling test with the end of stderr when the script exits non-zero.
    """
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
