"""A training run over two processes (jax.distributed on this machine, gloo collectives on CPU), each with two
devices, on a (data 2, fsdp 2) mesh spanning both: the same losses, checkpoints, validation and sample as one
process with four devices, and one set of logs; then a second run in the same processes resumes both from
their checkpoints (a new ``train_and_evaluate``: model, optimizer state and data position read back from disk;
fresh processes resuming are test_faults.py's kills) to the same losses."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from rwkv_jax.training.checkpointing import Checkpoints
from rwkv_jax.training.metrics import read_metrics
from tests.conftest import TEST_XLA_FLAGS

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]

# One process: argv = train, val, workdir, num_processes, process_id, port, steps. It trains to each of
# `steps` (comma-separated) in turn, each a new run resuming from the previous one's checkpoints.
RUN = """
import sys

import jax

from rwkv_jax.training import distributed, loop
from tests.training.conftest import tiny_config

train, val, workdir, num_processes, process_id, port, steps = sys.argv[1:]
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
for total in map(int, steps.split(",")):
    config.train.steps = total
    results = loop.train_and_evaluate(config, workdir)
    print("RUN", total, "START", results["start_step"], "SAMPLE", repr(results["sample"]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    corpus: tuple[str, str], workdir: pathlib.Path, num_processes: int, process_id: int, port: int, steps: str
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = TEST_XLA_FLAGS  # no forced device count from the parent: each process sets its own
    args = [*corpus, str(workdir), str(num_processes), str(process_id), str(port), steps]
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


def run_both(corpus: tuple[str, str], single: pathlib.Path, multi: pathlib.Path, steps: str) -> list[str]:
    """Runs the one-process and the two-process runs side by side; returns the three processes' outputs."""
    port = free_port()
    processes = [start(corpus, single, 1, 0, 0, steps)]
    processes += [start(corpus, multi, 2, i, port, steps) for i in range(2)]
    return [finish(p) for p in processes]


@pytest.fixture(scope="module")
def two_runs(corpus, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, list[str]]:
    """(workdir of the one-process runs, workdir of the two-process runs, the processes' outputs): 6 steps,
    then resumed to 8."""
    single, multi = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two_processes")
    return single, multi, run_both(corpus, single, multi, steps="6,8")


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
    assert Checkpoints(multi / "checkpoints").complete_steps() == [4, 6, 8]  # ckpt.keep = 3


def test_every_process_draws_the_same_sample_and_only_the_first_logs(two_runs):
    _, _, (single_out, first_out, second_out) = two_runs
    lines = [line for out in (single_out, first_out, second_out) for line in out.splitlines()]
    for run in ("RUN 6 ", "RUN 8 "):
        samples = [line for line in lines if line.startswith(run)]
        assert len(samples) == 3 and len(set(samples)) == 1, samples
    assert "validation loss" in first_out and "validation loss" not in second_out


def test_two_processes_resume_from_their_checkpoint_as_one_process_does(two_runs):
    single, multi, outputs = two_runs
    assert all("RUN 8 START 6 " in out for out in outputs), [out[-500:] for out in outputs]
    expected = {r["step"]: r["loss"] for r in records(single) if "loss" in r}
    got = {r["step"]: r["loss"] for r in records(multi) if "loss" in r}
    assert sorted(got) == list(range(1, 9))
    for step in (7, 8):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step
