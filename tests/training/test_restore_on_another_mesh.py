"""A checkpoint saved on a (data 4, fsdp 2) mesh restores onto (data 8, fsdp 1) and onto one device (orbax
reads each array into the shardings of the restoring run), and training goes on with the losses of the run
that was never interrupted."""

import json
import pathlib
import shutil

import jax
import pytest

from rwkv_jax.training import loop
from rwkv_jax.training.metrics import read_metrics
from tests.training.conftest import tiny_config
from tests.training.fake_devices import run_with_devices


def train(corpus: tuple[str, str], workdir: str | pathlib.Path, data: int, fsdp: int) -> dict[int, float]:
    """Trains the tiny RWKV-4 to step 4 (a checkpoint every 2) on a (data, fsdp) mesh: {step: loss}."""
    config = tiny_config(corpus, family="rwkv4")
    config.train.steps, config.ckpt.every, config.data.batch_size = 4, 2, 8
    config.mesh.data, config.mesh.fsdp = data, fsdp
    loop.train_and_evaluate(config, workdir)
    records = read_metrics(pathlib.Path(workdir) / "metrics.jsonl")
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def resume(corpus: tuple[str, str], full: pathlib.Path, workdir: pathlib.Path, data: int, fsdp: int) -> dict:
    """A copy of the run ``full`` cut back to its step-2 checkpoint (as if it had stopped there), resumed on
    a (data, fsdp) mesh: {step: loss}."""
    shutil.rmtree(pathlib.Path(shutil.copytree(full, workdir)) / "checkpoints" / "4")
    return train(corpus, workdir, data, fsdp)


# With 8 devices (a subprocess): the run on (4, 2), then a copy of it resumed on (8, 1); prints their
# {step: loss}.
EIGHT_DEVICES = """
import json, pathlib
from tests.training.test_restore_on_another_mesh import resume, train

corpus = ({train!r}, {val!r})
losses = {{"full": train(corpus, "full", 4, 2)}}
losses["on_8x1"] = resume(corpus, pathlib.Path("full"), pathlib.Path("on_8x1"), 8, 1)
print(json.dumps(losses))
"""


@pytest.mark.slow
def test_a_checkpoint_from_one_mesh_resumes_on_another_with_the_same_losses(corpus, tmp_path):
    script = EIGHT_DEVICES.format(train=corpus[0], val=corpus[1])
    out = json.loads(run_with_devices(script, 8, tmp_path).splitlines()[-1])
    losses = {name: {int(step): loss for step, loss in run.items()} for name, run in out.items()}
    # One device: this process's (the suite's processes have one CPU device), no third JAX start-up.
    assert jax.device_count() == 1
    losses["on_1"] = resume(corpus, tmp_path / "full", tmp_path / "on_1", 1, 1)
    full = losses.pop("full")
    # measured: on 8x1 the losses are identical, on one device 1.1e-7 relative (reductions split otherwise)
    for name, resumed in losses.items():
        for step in (3, 4):
            assert resumed[step] == pytest.approx(full[step], rel=2e-6), (name, step)
