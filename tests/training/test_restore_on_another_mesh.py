"""A checkpoint saved on a (data 4, fsdp 2) mesh restores onto (data 8, fsdp 1) and onto one device (orbax
reads each array into the shardings of the restoring run), and training goes on with the losses of the run
that was never interrupted."""

import json

import pytest

from tests.training.fake_devices import run_with_devices

# Runs `full` on (4, 2) when asked, then resumes copies of it cut back to its step-2 checkpoint (as if it
# had stopped there) on each (workdir, data, fsdp); prints {workdir: {step: loss}}.
RUNS = """
import json, pathlib, shutil
from rwkv_jax.training import loop
from rwkv_jax.training.metrics import read_metrics
from tests.training.conftest import tiny_config

def train(workdir, data, fsdp):
    config = tiny_config(({train!r}, {val!r}), family="rwkv4")
    config.train.steps, config.ckpt.every, config.data.batch_size = 4, 2, 8
    config.mesh.data, config.mesh.fsdp = data, fsdp
    loop.train_and_evaluate(config, workdir)
    return {{r["step"]: r["loss"] for r in read_metrics(workdir + "/metrics.jsonl") if "loss" in r}}

losses = {{"full": train("full", 4, 2)}} if {first!r} else {{}}
for workdir, data, fsdp in {resumed!r}:
    shutil.rmtree(pathlib.Path(shutil.copytree("full", workdir)) / "checkpoints" / "4")
    losses[workdir] = train(workdir, data, fsdp)
print(json.dumps(losses))
"""


def run(corpus, tmp_path, devices, first, resumed):
    script = RUNS.format(train=corpus[0], val=corpus[1], first=first, resumed=resumed)
    out = json.loads(run_with_devices(script, devices, tmp_path).splitlines()[-1])
    return {name: {int(step): loss for step, loss in losses.items()} for name, losses in out.items()}


@pytest.mark.slow
def test_a_checkpoint_from_one_mesh_resumes_on_another_with_the_same_losses(corpus, tmp_path):
    losses = run(corpus, tmp_path, 8, True, [("on_8x1", 8, 1)])
    losses |= run(corpus, tmp_path, 1, False, [("on_1", 1, 1)])
    full = losses.pop("full")
    # measured: on 8x1 the losses are identical, on one device 1.1e-7 relative (reductions split otherwise)
    for name, resumed in losses.items():
        for step in (3, 4):
            assert resumed[step] == pytest.approx(full[step], rel=2e-6), (name, step)
