"""Checks every RWKV model family must pass: the relative error used throughout, and the state contract."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.numerics import relative_error


def assert_prefill_equals_steps_and_pieces(model: Callable, tokens: jax.Array, cut: int) -> None:
    """``model(tokens)`` == one token at a time == ``tokens[:, :cut]`` then the rest with the state carried
    (logits and every final state leaf by relative error over the tensor; every state leaf float32).

    Measured (float32, XLA:CPU, 2026-12): logits <= 1.4e-7 (bound 2e-6), state leaves <= 8.9e-8 (bound 1e-6)
    over RWKV-4, Eagle 5.1 / 5.2, Finch and Goose.
    """
    full, full_state = model(tokens)
    state, steps = None, []
    for t in range(tokens.shape[1]):
        logits, state = model(tokens[:, t : t + 1], state)
        steps.append(logits)
    assert relative_error(jnp.concatenate(steps, axis=1), full) < 2e-6
    first, state = model(tokens[:, :cut])
    second, pieces_state = model(tokens[:, cut:], state)
    assert relative_error(jnp.concatenate([first, second], axis=1), full) < 2e-6
    for a, b in zip(jax.tree.leaves(pieces_state), jax.tree.leaves(full_state), strict=True):
        assert a.dtype == jnp.float32
        assert relative_error(a, b) < 1e-6


def assert_gradients_reach_every_parameter(model: nnx.Module, tokens: jax.Array) -> None:
    """The next-token loss on ``tokens`` has a finite, nonzero gradient for every parameter."""
    graphdef, params = nnx.split(model)

    def loss(params):
        logits, _ = nnx.merge(graphdef, params)(tokens[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))

    grads = jax.jit(jax.grad(loss))(params)
    for path, grad in nnx.to_flat_state(grads):
        value = np.asarray(grad.get_value())
        assert np.isfinite(value).all(), path
        assert np.abs(value).max() > 0, f"no gradient reaches {path}"
