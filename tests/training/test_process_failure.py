"""Multi-process failure: when one of two training processes is killed, the survivor exits non-zero with an
error that names the lost process within a bounded time (distributed.heartbeat_timeout_seconds), instead of
waiting in a collective forever."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import TEST_XLA_FLAGS

REPO = pathlib.Path(__file__).resolve().parents[2]
HEARTBEAT_S = 4  # short here; the default (100 s) suits real clusters

# One process of a two-process run that would train for a long time; argv = train, val, workdir, id, port.
RUN = """
import sys
from rwkv_jax.training import distributed, loop
from tests.training.conftest import tiny_config

train, val, workdir, process_id, port = sys.argv[1:]
config = tiny_config((train, val), family="rwkv4")
config.train.steps, config.ckpt.every, config.data.batch_size = 100000, 0, 4
config.mesh.data = 4
d = config.distributed
d.initialize, d.coordinator_address = True, "127.0.0.1:" + port
d.num_processes, d.process_id, d.local_device_count = 2, int(process_id), 2
d.heartbeat_timeout_seconds = {heartbeat}
distributed.initialize(d)
loop.train_and_evaluate(config, workdir)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_survivor_of_a_killed_process_exits_with_an_error_within_the_heartbeat_timeout(corpus, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": TEST_XLA_FLAGS}
    port, script = free_port(), RUN.format(heartbeat=HEARTBEAT_S)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, *corpus, str(tmp_path), str(i), str(port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    survivor, victim = processes
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "metrics.jsonl").is_file():  # both are training (process 0 logs step 1)
            assert survivor.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        output, _ = survivor.communicate(timeout=60)
        waited = time.monotonic() - killed
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    text = output.decode(errors="replace")
    # measured: the survivor aborted (-6) 3.1 s after the kill, naming process 1 as having stopped heartbeats
    assert survivor.returncode != 0, text[-2000:]
    assert waited < 25, waited
    assert "stopped sending heartbeats" in text, text[-2000:]
