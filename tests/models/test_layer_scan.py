"""The blocks as a scan over layers (:mod:`rwkv_jax.models.layer_scan`): the same logits, state and gradients
as the Python loop for every family (with packed documents), a fallback to the loop where one layer differs,
and a training-step program whose size does not grow with depth.

Floats are compared by relative error over the tensor (:func:`rwkv_jax.numerics.relative_error`).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.finetune.lora import LoRALinear
from rwkv_jax.numerics import relative_error
from rwkv_jax.presets import get_preset
from tests.models.contract import random_tokens, randomize

SMALL = dict(n_embd=32, vocab_size=32, dtype="float32", wkv_impl="recurrent")  # recurrent: takes starts
STEPS = 4


def _model(preset: str, n_layer: int) -> nnx.Module:
    return randomize(get_preset(preset).build(seed=0, n_layer=n_layer, **SMALL), seed=1)


def _value_and_grads(model: nnx.Module, scan: bool) -> tuple:
    """Logits, new state and the gradients (parameters, state) of a fixed projection of the logits, jitted,
    on a packed call (documents starting at t = 0 and 2) from a random state."""
    model.scan_layers = scan
    tokens = random_tokens(model.config.vocab_size, 2, STEPS, seed=2)
    starts = jnp.zeros((2, STEPS), bool).at[:, 0].set(True).at[0, 2].set(True)
    keys = iter(jax.random.split(jax.random.key(3), 64))
    state = jax.tree.map(lambda x: x + jax.random.normal(next(keys), x.shape), model.init_state(2))
    direction = jnp.asarray(np.random.default_rng(4).normal(size=(2, STEPS, model.config.vocab_size)))
    graphdef, params = nnx.split(model)

    def loss(params, state):
        logits, new_state = nnx.merge(graphdef, params)(tokens, state, starts=starts)
        return jnp.sum(logits * direction), (logits, new_state)

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, state)
    return out, grads


def _assert_scan_equals_loop(model: nnx.Module) -> None:
    scanned, scanned_grads = _value_and_grads(model, scan=True)
    looped, looped_grads = _value_and_grads(model, scan=False)
    # Measured (float32, XLA:CPU): 0 for logits, state and every gradient (the same ops in the same order).
    for name, a, b in [("out", scanned, looped), ("grads", scanned_grads, looped_grads)]:
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
            if float(jnp.linalg.norm(y)) == 0.0:  # parameters no path reaches (RWKV-7's block-0 v0)
                assert float(jnp.linalg.norm(x)) == 0.0, name + jax.tree_util.keystr(path)
            else:
                assert relative_error(x, y) < 1e-6, name + jax.tree_util.keystr(path)


@pytest.mark.parametrize("preset", ["rwkv4-tiny", "goose-tiny"])
def test_scanned_blocks_give_the_logits_state_and_gradients_of_the_loop(preset):
    _assert_scan_equals_loop(_model(preset, n_layer=3))  # block 0 alone, a scan of two


def test_a_model_with_one_different_layer_falls_back_and_matches():
    # Finch's whole contract in one compile: block 0 (ln0) alone, 1-2 scanned, 3 (an adapter) alone.
    model = _model("finch-tiny", n_layer=4)
    key = model.blocks[3].att.key
    a = jax.random.normal(jax.random.key(5), (32, 2))
    b = jax.random.normal(jax.random.key(6), (2, 32))
    model.blocks[3].att.key = LoRALinear(key, key.kernel[...], a, b, alpha=2.0)
    _assert_scan_equals_loop(model)


# Ops that move the per-layer parameters into the scan and the gradients out of it (one stack and one slice
# a leaf per layer: design (a) of issue 15, parameters stored per layer); every other op is computation.
_MOVES = {"broadcast_in_dim", "reshape", "slice", "concatenate"}


def _training_step_ops(preset: str, n_layer: int) -> tuple[int, int]:
    """(computing ops, all ops) of the lowered (StableHLO) forward + backward of a next-token loss."""
    model = _model(preset, n_layer)
    graphdef, params = nnx.split(model)
    tokens = random_tokens(model.config.vocab_size, 1, STEPS, seed=2)

    def loss(params):
        logits, _ = nnx.merge(graphdef, params)(tokens[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))

    ops = re.findall(r"= \"?stablehlo\.([a-z_]+)", jax.jit(jax.grad(loss)).lower(params).as_text())
    return sum(op not in _MOVES for op in ops), len(ops)


@pytest.mark.parametrize("preset", ["finch-tiny", "goose-tiny"])
def test_the_training_step_computes_with_the_same_ops_at_any_depth(preset):
    # 3 layers: block 0 alone and a scan of two (Goose: block 0, then a scan of the other two).
    (shallow, shallow_all), (deep, deep_all) = _training_step_ops(preset, 3), _training_step_ops(preset, 9)
    assert deep == shallow
    # Measured (Finch): all ops 2,488 -> 3,010 (+21 %, the moves), the loop's 1,997 -> 5,171 (+159 %).
    assert deep_all < 1.3 * shallow_all, (shallow_all, deep_all)
