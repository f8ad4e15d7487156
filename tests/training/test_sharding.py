"""Logical axes -> mesh: the rules table, the mesh, and training on a 4-device (1 x 2 x 2) CPU mesh."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from rwkv_jax.numerics import relative_error
from rwkv_jax.sharding import batch_sharding, logical_to_spec, make_mesh
from rwkv_jax.training.config import default_config

REPO = pathlib.Path(__file__).resolve().parents[2]
RULES = default_config().sharding_rules


def mesh_222():
    return AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))


def test_rules_map_logical_axes_to_mesh_axes():
    mesh = mesh_222()
    assert logical_to_spec(("vocab", "embed"), (256, 64), RULES, mesh) == PartitionSpec("tensor", "fsdp")
    assert logical_to_spec(("embed", "mlp"), (64, 224), RULES, mesh) == PartitionSpec("fsdp", "tensor")
    assert logical_to_spec(("heads", "head_dim"), (4, 16), RULES, mesh) == PartitionSpec("tensor", None)
    assert logical_to_spec(None, (3,), RULES, mesh) == PartitionSpec()


def test_a_dimension_stays_replicated_when_it_does_not_divide_or_its_mesh_axis_is_taken():
    mesh = mesh_222()
    assert logical_to_spec(("vocab", "embed"), (255, 64), RULES, mesh) == PartitionSpec(None, "fsdp")
    assert logical_to_spec(("mlp", "heads"), (8, 8), RULES, mesh) == PartitionSpec("tensor", None)
    assert logical_to_spec(("lora", "embed"), (4, 64), RULES, mesh) == PartitionSpec(None, "fsdp")


def test_default_mesh_puts_every_device_on_data():
    mesh = make_mesh()
    assert dict(mesh.shape) == {"data": len(jax.devices()), "fsdp": 1, "tensor": 1, "context": 1}
    assert batch_sharding(mesh, RULES).spec == PartitionSpec(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="needs 8 devices"):
        make_mesh(2, 2, 2)
    with pytest.raises(ValueError, match="at most one -1"):
        make_mesh(-1, -1, 1)


# Both families in one process (one start-up and import of JAX for the two): prints
# {family: [val_loss data-parallel, val_loss fsdp 2 x tensor 2]}.
SCRIPT = """
import json
import jax
from tests.training.conftest import tiny_config  # the repository root is on PYTHONPATH
from rwkv_jax.training import loop
assert len(jax.devices()) == 4
results = {{}}
for family in {families!r}:
    for data, fsdp, tensor in [(4, 1, 1), (1, 2, 2)]:
        config = tiny_config(({train!r}, {val!r}), family=family)
        config.train.steps, config.ckpt.every, config.data.batch_size, config.eval.batches = 1, 0, 4, 1
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
        workdir = {workdir!r} + f"/{{family}}/{{data}}"
        results.setdefault(family, []).append(loop.train_and_evaluate(config, workdir)["val_loss"])
print(json.dumps(results))
"""
FAMILIES = ["rwkv4", "rwkv6"]  # rwkv6: the chunked WKV, heads split on tensor


@pytest.fixture(scope="module")
def sharded_losses(corpus, tmp_path_factory) -> dict[str, list[float]]:
    """{family: [validation loss after a step on (4, 1, 1), the same on (1, 2, 2)]}, on 4 CPU devices."""
    tmp_path = tmp_path_factory.mktemp("sharding")
    script = SCRIPT.format(train=corpus[0], val=corpus[1], workdir=str(tmp_path), families=FAMILIES)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp_and_tensor_sharded_training_matches_data_parallel(sharded_losses, family):
    data_parallel, sharded = sharded_losses[family]
    # measured 2.6e-9 (rwkv4), 1.3e-8 (rwkv6)
    assert relative_error(sharded, data_parallel) < 1e-7, (family, sharded, data_parallel)
