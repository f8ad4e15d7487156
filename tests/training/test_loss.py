"""Cross entropy and L2Wrap: the penalty's gradient is RWKV-LM's L2Wrap gradient; the loss value is kept."""

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.numerics import relative_error
from rwkv_jax.training.loss import lm_loss, token_nll


def test_token_nll_matches_log_softmax_in_float64():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 7), jnp.float64)
    targets = jnp.array([[0, 6, 3], [1, 1, 2]], jnp.int32)
    expected = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1)
    got = token_nll(logits.astype(jnp.float32), targets)
    assert got.dtype == jnp.float32
    assert relative_error(got, expected[..., 0]) <= 5e-7  # measured: 5.8e-8


def test_l2wrap_adds_rwkv_lm_gradient_on_the_max_logit():
    logits = 5.0 * jax.random.normal(jax.random.key(1), (2, 4, 11), jnp.float32)
    targets = jax.random.randint(jax.random.key(2), (2, 4), 0, 11, jnp.int32)
    coef = 1e-4

    def objective(lg, c):
        return lm_loss(lg, targets, c)[0]

    extra = jax.grad(objective)(logits, coef) - jax.grad(objective)(logits, 0.0)
    # RWKV-LM L2Wrap.backward: factor = 1e-4 / (B * T); gy.scatter_(-1, argmax, max * factor)
    factor = coef / (2 * 4)
    peak = np.asarray(logits).max(-1)
    expected = np.zeros(logits.shape, np.float32)
    np.put_along_axis(expected, np.asarray(logits).argmax(-1)[..., None], (peak * factor)[..., None], -1)
    # measured: 2.0e-5 (the difference of two float32 gradients ~1e3x larger than it)
    assert relative_error(extra, expected) <= 1e-4
    _, nll_with = lm_loss(logits, targets, coef)
    _, nll_without = lm_loss(logits, targets, 0.0)
    assert float(nll_with) == float(nll_without)
