"""Checks every RWKV model family must pass: the relative error used throughout, and the state contract."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def relative_error(a, b) -> float:
    """``||a - b|| / ||b||`` in float64, after checking that neither holds NaN."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert not np.isnan(a).any() and not np.isnan(b).any()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def assert_prefill_equals_steps_and_pieces(model: Callable, tokens: jax.Array, cut: int) -> None:
    """``model(tokens)`` == one token at a time == ``tokens[:, :cut]`` then the rest with the state carried
    (logits and final state to 1e-5, every state leaf float32)."""
    full, full_state = model(tokens)
    state, steps = None, []
    for t in range(tokens.shape[1]):
        logits, state = model(tokens[:, t : t + 1], state)
        steps.append(logits)
    assert relative_error(jnp.concatenate(steps, axis=1), full) < 1e-5
    first, state = model(tokens[:, :cut])
    second, pieces_state = model(tokens[:, cut:], state)
    assert relative_error(jnp.concatenate([first, second], axis=1), full) < 1e-5
    for a, b in zip(jax.tree.leaves(pieces_state), jax.tree.leaves(full_state), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


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
