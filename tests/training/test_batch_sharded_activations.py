"""The train step keeps activations batch-sharded (:func:`rwkv_jax.sharding.keep_batch_sharded`): with
``batch`` and ``embed`` both on ``fsdp``, XLA's partitioner otherwise gathers the activations of the whole
``fsdp`` group onto each device (docs/pod_scale.md). Checked on 8 fake devices by the compiled step's
temporaries (XLA's memory analysis), with the constraint and without it."""

import pytest

from tests.training.fake_devices import run_with_devices

SCRIPT = """
import jax, numpy as np, optax
from flax import nnx
from rwkv_jax import sharding
from rwkv_jax.presets import get_preset
from rwkv_jax.training.config import default_config
from rwkv_jax.training.model import ModelFns
from rwkv_jax.training.step import jit_train_step, make_train_step, optimizer_state_shardings

rules = default_config().sharding_rules
mesh = sharding.make_mesh(data=1, fsdp=8)
model = nnx.eval_shape(lambda: get_preset("finch-tiny").build(
    seed=0, n_layer=2, n_embd=128, vocab_size=512, head_size=16, dtype="bfloat16", wkv_impl="recurrent"))
fns, params = ModelFns.split(model)
tx = optax.adamw(1e-3)
param_sh = sharding.tree_shardings(fns.logical_axes, params, rules, mesh)
opt_sh = optimizer_state_shardings(tx, params, param_sh, mesh)
batch_sh = sharding.batch_sharding(mesh, rules)
def shaped(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
args = (shaped(params, param_sh), shaped(jax.eval_shape(tx.init, params), opt_sh),
        jax.ShapeDtypeStruct((8, 129), np.int32, sharding=batch_sh))
for spec in (None, sharding.batch_spec(rules)):
    step = jit_train_step(make_train_step(fns, tx, batch_spec=spec), param_sh, opt_sh, batch_sh)
    print(step.lower(*args).compile().memory_analysis().temp_size_in_bytes)
"""


@pytest.mark.slow
def test_batch_sharded_activations_shrink_the_temporaries_under_fsdp(tmp_path):
    free, constrained = map(int, run_with_devices(SCRIPT, 8, tmp_path).split())
    # Measured (Finch, 2 layers, C 128, 8 x 128 tokens on fsdp 8): 26.8 -> 15.6 MB (0.58x).
    assert constrained < 0.7 * free, (free, constrained)
