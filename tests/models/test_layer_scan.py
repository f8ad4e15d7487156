"""The blocks as a scan over layers (:mod:`rwkv_jax.models.layer_scan`): the same logits, state and gradients
as the Python loop for every family (with packed documents), a fallback to the loop where one layer differs;
the stacked parameter layout of training (:mod:`rwkv_jax.models.layer_stack`): the same function, a bit-exact
round trip, and a training-step program whose size does not grow with depth.

Floats are compared by relative error over the tensor (:func:`rwkv_jax.numerics.relative_error`).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rwkv_jax
from rwkv_jax.finetune.lora import LoRALinear
from rwkv_jax.models.layer_stack import layer_count, stack_layers, unstack_layers
from rwkv_jax.numerics import relative_error
from rwkv_jax.presets import get_preset
from rwkv_jax.training.model import ModelFns
from rwkv_jax.training.optim import weight_decay_mask
from rwkv_jax.training.step import make_train_step
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
    # Measured (float32, XLA:CPU with the suite's elemental emitters, tests/conftest.py): logits and state
    # <= 2.7e-7, gradients <= 2.7e-6 (Finch's bonus in the fallback case; a sum over tokens that the two
    # programs order differently); Goose 0. With XLA:CPU's default fusion emitters every figure is 0.
    bounds = {"out": 2e-6, "grads": 2e-5}
    for name, a, b in [("out", scanned, looped), ("grads", scanned_grads, looped_grads)]:
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
            if float(jnp.linalg.norm(y)) == 0.0:  # parameters no path reaches (RWKV-7's block-0 v0)
                assert float(jnp.linalg.norm(x)) == 0.0, name + jax.tree_util.keystr(path)
            else:
                assert relative_error(x, y) < bounds[name], name + jax.tree_util.keystr(path)


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


def _training_step_ops(preset: str, n_layer: int) -> tuple[int, int]:
    """(computing ops, all ops) of the lowered (StableHLO) train step of ``rwkv_jax.training`` (forward,
    backward and AdamW) on the parameters as training splits them (``ModelFns``: stacked layers)."""
    fns, params = ModelFns.split(_model(preset, n_layer))
    tx = optax.adamw(1e-3)
    batch = random_tokens(32, 1, STEPS + 1, seed=2)
    text = jax.jit(make_train_step(fns, tx)).lower(params, tx.init(params), batch).as_text()
    ops = re.findall(r"= \"?stablehlo\.([a-z_]+)", text)
    return sum(op != "broadcast_in_dim" for op in ops), len(ops)


@pytest.mark.parametrize("preset", ["finch-tiny", "goose-tiny"])
def test_the_training_step_program_does_not_grow_with_depth(preset):
    # 3 layers: block 0 alone and a stack of two; 9: block 0 and a stack of eight.
    (shallow, shallow_all), (deep, deep_all) = _training_step_ops(preset, 3), _training_step_ops(preset, 9)
    assert deep == shallow
    # Measured (Finch): all ops 4,657 -> 4,675 (+0.4 %: the zero initial state broadcast per layer); with
    # parameters stored per layer and stacked in the call it was +21 %, the Python loop's +159 %.
    assert deep_all < 1.02 * shallow_all, (shallow_all, deep_all)


@pytest.mark.parametrize("preset", ["rwkv4-tiny", "goose-tiny"])
def test_stacked_layers_compute_the_same_and_unstack_bit_for_bit(preset):
    model = _model(preset, n_layer=4)
    stacked = stack_layers(model)
    assert [layer_count(item) for item in stacked.blocks] == [1, 3]
    tokens = random_tokens(32, 2, STEPS, seed=2)
    # Against the per-layer model's whole program, which scans the same blocks (its call runs layer by
    # layer on CPU, rwkv_jax.layerwise: rounded differently). Measured: 0 (the same scan, the same numbers).
    jitted = rwkv_jax.decoder(model)
    expected, _ = jitted.step.whole(jitted.params, tokens, model.init_state(tokens.shape[0]))
    assert relative_error(stacked(tokens)[0], expected) == 0.0
    back = unstack_layers(stacked)
    for a, b in zip(nnx.to_flat_state(nnx.state(back)), nnx.to_flat_state(nnx.state(model)), strict=True):
        assert a[0] == b[0] and a[1].get_metadata() == b[1].get_metadata(), a[0]
        assert np.array_equal(a[1].get_value(), b[1].get_value()), a[0]


def test_weight_decay_counts_a_stacked_parameter_by_one_layer_shape():
    fns, params = ModelFns.split(_model("finch-tiny", n_layer=3))
    mask = weight_decay_mask(fns.logical_axes, params)
    att = mask["blocks"][1]["layers"]["att"]
    assert att["key"]["kernel"] and not att["mix"]["time_maa_x"] and not att["bonus"]["time_faaaa"]
