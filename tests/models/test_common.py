"""Shared model pieces: with_config swaps settings that keep parameter shapes, and refuses the others."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax import RWKV4, Impl, RWKV4Config
from rwkv_jax.models.common import token_shift, with_config

CONFIG = RWKV4Config(vocab_size=32, n_layer=1, n_embd=16, wkv_impl="recurrent")


def test_with_config_keeps_parameters_and_changes_the_form():
    model = RWKV4(CONFIG, rngs=nnx.Rngs(0))
    twin = with_config(model, wkv_impl="scan")
    assert twin.config.wkv_impl is Impl.SCAN and twin.blocks[0].att.wkv_impl is Impl.SCAN
    np.testing.assert_array_equal(twin.head.kernel[...], model.head.kernel[...])
    assert model.blocks[0].att.wkv_impl is Impl.RECURRENT  # the original is untouched


def test_with_config_refuses_a_change_of_parameter_shapes():
    with pytest.raises(ValueError, match="parameter shapes"):
        with_config(RWKV4(CONFIG, rngs=nnx.Rngs(0)), n_embd=8)


def test_token_shift_fills_position_zero_with_the_carried_input():
    x = jnp.arange(12, dtype=jnp.float32).reshape(1, 3, 4)
    shifted, last = token_shift(x, jnp.full((1, 4), -1.0))
    np.testing.assert_array_equal(shifted[0, 0], -1.0)
    np.testing.assert_array_equal(shifted[0, 1:], x[0, :2])
    np.testing.assert_array_equal(last, x[:, -1])
