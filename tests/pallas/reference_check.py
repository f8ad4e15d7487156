"""A WKV kernel against its float64 reference: forward and the gradient of every input and the state."""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tests.wkv.helpers import rel_err, to_f64


def loss(form, directions, *args):
    """A fixed random projection of y and the final state, so that every gradient is exercised."""
    y, state = form(*args)
    return jnp.sum(y * directions[0].astype(y.dtype)) + jnp.sum(state * directions[1])


def assert_matches_reference(
    run: Callable,
    reference: Callable,
    args: tuple,
    names: tuple[str, ...],
    tolerances: tuple[float, float],
) -> None:
    """``run(*args)`` (y in v's dtype, the third input; float32 state) against ``reference`` on the float64
    copies: y, the final state and the gradient wrt each of ``args`` (named ``names``), in relative error
    within ``tolerances = (forward, gradient)``."""
    forward_tolerance, gradient_tolerance = tolerances
    args64 = to_f64(args)
    y_ref, s_ref = reference(*args64)
    y, s = run(*args)
    assert y.dtype == args[2].dtype and s.dtype == jnp.float32
    assert rel_err(y, y_ref) <= forward_tolerance
    assert rel_err(s, s_ref) <= forward_tolerance
    rng = np.random.default_rng(0)
    directions = (jnp.asarray(rng.normal(size=y.shape)), jnp.asarray(rng.normal(size=s.shape)))
    wrt = tuple(range(len(args)))
    grads_ref = jax.grad(functools.partial(loss, reference, directions), argnums=wrt)(*args64)
    grads = jax.grad(functools.partial(loss, run, directions), argnums=wrt)(*args)
    for name, grad, grad_ref, arg in zip(names, grads, grads_ref, args, strict=True):
        assert grad.dtype == arg.dtype, name
        assert rel_err(grad, grad_ref) <= gradient_tolerance, name
