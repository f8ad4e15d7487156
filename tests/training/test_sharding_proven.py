"""Sharding checked on the arrays themselves, not trusted from the loss: under an FSDP mesh each device holds
about 1/fsdp of the parameter and optimiser bytes, and a run whose rules replicate the parameters is refused
before it compiles anything."""

import jax
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from rwkv_jax.sharding import MESH_AXES, make_mesh
from rwkv_jax.training.sharding_check import check_replicated, parameter_sharding_axes
from tests.training.fake_devices import run_with_devices

# 8 fake devices, fsdp = 8: bytes each device holds (addressable_shards) against the totals.
PER_DEVICE = """
import jax, numpy as np, optax
from tests.training.conftest import tiny_config
from rwkv_jax.finetune.training import finetune_model
from rwkv_jax.sharding import MESH_AXES, make_mesh, tree_shardings
from rwkv_jax.training.model import ModelFns
from rwkv_jax.training.optim import make_optimizer, weight_decay_mask
from rwkv_jax.training.sharding_check import replicated_fraction
from rwkv_jax.training.step import optimizer_state_shardings

config = tiny_config(("unused", "unused"), family={family!r})
module, trainable = finetune_model(config)
fns, params, _ = ModelFns.split_trainable(module, trainable)
mesh = make_mesh(1, 8, 1)
param_sh = tree_shardings(fns.logical_axes, params, config.sharding_rules, mesh)
params = jax.device_put(params, param_sh)
tx, _ = make_optimizer(config.optim, 10, weight_decay_mask(fns.logical_axes, params, ()))
opt_state = jax.jit(tx.init, out_shardings=optimizer_state_shardings(tx, params, param_sh, mesh))(params)

def per_device(tree):
    held = dict.fromkeys(jax.devices(), 0)
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] += shard.data.nbytes
    return max(held.values()), sum(leaf.nbytes for leaf in jax.tree.leaves(tree))

fraction, _ = replicated_fraction(param_sh, params)
print(fraction, *per_device(params), *per_device(opt_state))
"""


@pytest.mark.parametrize("family", ["rwkv6", "rwkv7"])
def test_each_fsdp_device_holds_about_an_eighth_of_parameters_and_optimizer_state(tmp_path, family):
    out = run_with_devices(PER_DEVICE.format(family=family), 8, tmp_path).split()
    fraction, param_max, param_total, opt_max, opt_total = float(out[0]), *map(int, out[1:])
    # Measured: replicated fraction 0.012 (rwkv6) / 0.003 (rwkv7) of the bytes; the rest split 8 ways.
    assert fraction < 0.05
    for held, total in [(param_max, param_total), (opt_max, opt_total)]:
        assert total / 8 <= held <= total * (1 / 8 + fraction) + 64  # 64: Adam's replicated step count


def _shardings(mesh, specs):
    return [NamedSharding(mesh, PartitionSpec(*spec)) for spec in specs]


def test_only_fsdp_and_tensor_axes_are_expected_to_split_parameters():
    assert parameter_sharding_axes(AbstractMesh((4, 1, 1, 2), MESH_AXES)) == ()  # data x context
    assert parameter_sharding_axes(AbstractMesh((2, 2, 2, 1), MESH_AXES)) == ("fsdp", "tensor")
    shapes = [jax.ShapeDtypeStruct((64, 64), "float32"), jax.ShapeDtypeStruct((64,), "float32")]
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    assert check_replicated(_shardings(mesh, [(), ()]), shapes, mesh, 0.05) == 0.0


REFUSED = """
from rwkv_jax.training import loop
from rwkv_jax.training.sharding_check import ShardingError
from tests.training.conftest import tiny_config
config = tiny_config(({train!r}, {val!r}), family="rwkv6")
config.mesh.data, config.mesh.fsdp = 1, 2
config.sharding_rules = tuple((name, None) for name, _ in config.sharding_rules)
try:
    loop.train_and_evaluate(config, "run")
except ShardingError as error:
    print(error)
else:
    raise SystemExit("a mesh with every parameter replicated was accepted")
"""


def test_a_run_whose_rules_replicate_everything_fails_with_a_clear_error(corpus, tmp_path):
    out = run_with_devices(REFUSED.format(train=corpus[0], val=corpus[1]), 2, tmp_path)
    assert "100.0% of the parameter bytes are fully replicated" in out
    assert "config.sharding_rules" in out
