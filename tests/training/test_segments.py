"""Training in segments that carry the state: the exact mode's gradient equals the full-sequence gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkv_jax.models.family import families
from rwkv_jax.numerics import relative_error
from rwkv_jax.training.model import ModelFns, build_model
from rwkv_jax.training.segments import sequence_loss
from tests.training.conftest import tiny_model_section


def tiny(family: str):
    fns, params = ModelFns.split(build_model(tiny_model_section(family), seed=0))
    # The official init zeroes the output projections, which hides the gradient through the state: perturb.
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape, p.dtype), params)
    return fns, params


def rel(a, b):
    """The relative error of two gradient pytrees, over all their leaves as one vector."""
    return relative_error(np.concatenate([np.ravel(x) for x in a]), np.concatenate([np.ravel(x) for x in b]))


@pytest.mark.slow
@pytest.mark.parametrize("family", [family.name for family in families()])
def test_segmented_gradient_equals_full_sequence_gradient(family):
    fns, params = tiny(family)
    tokens = jax.random.randint(jax.random.key(0), (2, 33), 0, 256, jnp.int32)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def loss(params, segment_len, truncate):
        state = fns.init_state(params, 2)
        return sequence_loss(
            fns.apply, params, inputs, targets, state, segment_len=segment_len, truncate=truncate, l2wrap=1e-4
        )

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=(1, 2))
    (full, _), g_full = grad(params, 0, False)
    (seg, _), g_seg = grad(params, 8, False)
    (trunc, _), g_trunc = grad(params, 8, True)
    leaves = jax.tree.leaves
    assert relative_error(seg, full) <= 5e-7  # measured: 8.2e-8
    assert relative_error(trunc, full) <= 5e-7  # measured: 8.2e-8; truncation changes gradients, not values
    assert rel(leaves(g_seg), leaves(g_full)) < 2e-6  # measured 2.2e-7
    assert rel(leaves(g_trunc), leaves(g_full)) > 1e-3


def test_segment_length_must_divide_the_sequence():
    fns, params = tiny("rwkv4")
    tokens = jnp.zeros((1, 12), jnp.int32)
    with pytest.raises(ValueError, match=r"not a multiple of segments\.length 5"):
        sequence_loss(fns.apply, params, tokens, tokens, fns.init_state(params, 1), segment_len=5)
