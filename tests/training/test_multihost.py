"""A training run over two processes (jax.distributed on this machine, gloo collectives on CPU), each with two
devices, on a (data 2, fsdp 2) mesh spanning both: the same losses, checkpoints, validation and sample as one
process with four devices, and one set of logs."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from rwkv_jax.training.checkpointing import Checkpoints
from rwkv_jax.training.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]

# One process of a run: argv = train, val, workdir, num_processes, process_id, port.
RUN = """
import sys

import jax

from rwkv_jax.training import distributed, loop
from tests.training.conftest import tiny_config

train, val, workdir, num_processes, process_id, port = sys.argv[1:]
config = tiny_config((train, val), family="rwkv6")
config.data.batch_size = 4  # one sequence per device
config.mesh.data, config.mesh.fsdp = 2, 2
config.eval.sample_tokens = 8
if int(num_processes) == 1:
    jax.config.update("jax_num_cpu_devices", 4)
else:
    d = config.distributed
    d.initialize, d.coordinator_address = True, f"127.0.0.1:{port}"
    d.num_processes, d.process_id, d.local_device_count = int(num_processes), int(process_id), 2
distributed.initialize(config.distributed)
assert len(jax.devices()) == 4 and len(jax.local_devices()) == 4 // int(num_processes)
results = loop.train_and_evaluate(config, workdir)
print("SAMPLE", repr(results["sample"]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(corpus: tuple[str, str], workdir: pathlib.Path, num_processes: int, process_id: int, port: int):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # no forced device count from the parent: each process sets its own
    args = [*corpus, str(workdir), str(num_processes), str(process_id), str(port)]
    return subprocess.Popen(
        [sys.executable, "-c", RUN, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def two_runs(corpus, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, list[str]]:
    """(workdir of the one-process run, workdir of the two-process run, the processes' outputs)."""
    single, multi = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two_processes")
    port = free_port()
    processes = [start(corpus, single, 1, 0, 0)] + [start(corpus, multi, 2, i, port) for i in range(2)]
    outputs = [finish(p) for p in processes]
    return single, multi, outputs


def records(workdir: pathlib.Path) -> list[dict]:
    return read_metrics(workdir / "metrics.jsonl")


def test_two_processes_train_as_one_process_with_as_many_devices(two_runs):
    single, multi, _ = two_runs
    expected, got = records(single), records(multi)
    assert [r["step"] for r in got] == [r["step"] for r in expected]  # written once, not once per process
    for a, b in zip(got, expected, strict=True):
        if "loss" in a:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["step"]
    final_single = json.loads((single / "final_metrics.json").read_text())
    final_multi = json.loads((multi / "final_metrics.json").read_text())
    assert final_multi["val_loss"] == pytest.approx(final_single["val_loss"], rel=1e-5)
    assert Checkpoints(multi / "checkpoints").complete_steps() == [2, 4, 6]


def test_every_process_draws_the_same_sample_and_only_the_first_logs(two_runs):
    _, _, (single_out, first_out, second_out) = two_runs
    samples = [line for out in (single_out, first_out, second_out) for line in out.splitlines()]
    samples = [line for line in samples if line.startswith("SAMPLE")]
    assert len(samples) == 3 and len(set(samples)) == 1, samples
    assert "validation loss" in first_out and "validation loss" not in second_out
